"""The backbone contract: a registered ``Backbone`` builds ``DiffusionModel`` instances.

A ``DiffusionModel`` wraps a diffusers model behind one forward signature,
``model(x_t, t, cond) -> prediction [B, C, H, W]``, and names its feature taps (module
paths whose forward outputs FeatKD distils).  ``pair_taps`` pairs a student's taps with
a teacher's: one to one at equal depth, evenly spaced teacher taps for a shallower
student (student tap i -> teacher tap floor((i+1)*T/S) - 1, which is TinyFusion's 2i+1
when the teacher is twice as deep).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn


class DiffusionModel(nn.Module):
    """Uniform wrapper around a diffusers model.

    Attributes: ``inner`` (the wrapped model), ``backbone`` (registry name), ``spec``
    (a JSON-able dict that rebuilds the architecture: preset/config, image size,
    channels, classes, and pruning information when pruned), ``taps`` (module paths
    relative to this wrapper, in depth order).  A tap whose module returns a tuple records
    element ``tap_output_index.get(tap)``, else the first tensor (``harness.features``).
    """

    tap_output_index: dict[str, int] = {}

    def __init__(self, inner: nn.Module, backbone: str, spec: dict[str, Any], taps: list[str]):
        super().__init__()
        self.inner = inner
        self.backbone = backbone
        self.spec = dict(spec)
        self.taps = list(taps)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def tap_set(self, name: str = "blocks") -> list[str]:
        """The taps of a named set: ``"blocks"`` is ``self.taps``; a backbone may offer more
        (the U-Net's ``"submodules"``) by overriding ``extra_tap_sets``."""
        sets = {"blocks": self.taps, **self.extra_tap_sets()}
        if name not in sets:
            from harness.errors import OptionError

            raise OptionError(
                f"backbone {self.backbone!r} has no tap set {name!r}; its tap sets: "
                f"{', '.join(sets)}"
            )
        return list(sets[name])

    def extra_tap_sets(self) -> dict[str, list[str]]:
        return {}

    def tap_modules(self) -> dict[str, nn.Module]:
        modules = dict(self.named_modules())
        return {name: modules[name] for name in self.taps}


class Backbone:
    """A registered model family.  Subclasses set ``name``, ``default_process``, ``presets``.

    ``presets`` maps a size name to the keyword arguments of the underlying diffusers
    model config, ordered from smallest to largest (the capacity ladder).
    """

    name: ClassVar[str] = ""
    default_process: ClassVar[str] = "ddpm"
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # The tap sets its models offer (``DiffusionModel.tap_set``), checked before a grid runs.
    tap_sets: ClassVar[tuple[str, ...]] = ("blocks",)

    def build(
        self,
        preset: str | None = None,
        *,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        config: dict[str, Any] | None = None,
    ) -> DiffusionModel:
        raise NotImplementedError

    def from_pretrained(self, path_or_id: str, **kwargs: Any) -> DiffusionModel:
        raise NotImplementedError

    def check_image_size(self, image_size: int, preset: str | None = None) -> None:
        """Raise OptionError when the backbone cannot take this image size."""

    @staticmethod
    def pair_taps(
        student: DiffusionModel, teacher: DiffusionModel, tap_set: str = "blocks"
    ) -> dict[str, str]:
        return pair_taps(student.tap_set(tap_set), teacher.tap_set(tap_set))


def pair_taps(student_taps: list[str], teacher_taps: list[str]) -> dict[str, str]:
    """Student tap -> teacher tap (equal depth 1:1; shallower student evenly spaced)."""
    s, t = len(student_taps), len(teacher_taps)
    if s == 0 or t == 0:
        return {}
    if s > t:
        # A deeper student than teacher: pair each teacher tap with an evenly spaced student tap.
        inverse = pair_taps(teacher_taps, student_taps)
        return {sv: tk for tk, sv in inverse.items()}
    return {student_taps[i]: teacher_taps[(i + 1) * t // s - 1] for i in range(s)}
