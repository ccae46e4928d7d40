"""Parameter counts of every backbone preset (the ``kdbench models`` command).

Models are built on PyTorch's ``meta`` device, so even the paper-scale presets
(DiT-XL/2, an SD3-medium-sized MMDiT) are counted without allocating their weights.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.errors import OptionError


def count_preset(
    backbone: Any, preset: str, image_size: int, channels: int, num_classes: int
) -> int:
    """Parameters of ``backbone.build(preset, ...)``, built on the meta device."""
    with torch.device("meta"):
        model = backbone.build(
            preset, image_size=image_size, channels=channels, num_classes=num_classes
        )
    return model.num_parameters()


def preset_table(
    backbone_name: str, image_size: int, channels: int = 3, num_classes: int = 10
) -> list[dict[str, Any]]:
    """``[{"name", "params"}]`` for each preset of ``backbone_name``, smallest first.

    Presets that cannot take ``image_size`` (e.g. a U-Net too deep for it) are left out.
    """
    from harness.registry import lookup

    backbone = lookup("backbone", backbone_name)()
    rows = []
    for name in backbone.presets:
        try:
            backbone.check_image_size(image_size, name)
        except OptionError:
            continue
        rows.append(
            {
                "name": name,
                "params": count_preset(backbone, name, image_size, channels, num_classes),
            }
        )
    return rows
