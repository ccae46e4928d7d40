"""Shared code of the built-in backbones: the ``DiffusersBackbone`` base class, preset
resolution, option checks, labels.

A model is described by its *architecture config*: the keyword arguments of the diffusers
class (plus a few wrapper options such as MMDiT's ``cond_tokens``) without the ones that
follow from the data (image size, channels, classes), which ``build`` derives.  ``build``
starts from a preset (the backbone's ``default_preset`` when none is named) and applies
``config`` on top; the model's ``spec`` stores the merged config (every preset key plus
the overrides) next to the preset name, and ``build(spec["preset"], config=spec["config"])``
rebuilds the architecture.

``DiffusersBackbone`` lives here, with the built-in plugins, rather than in the core: the
core's contract is ``harness.backbone.Backbone`` (what the harness calls), while this class
encodes one convention for wrapping a diffusers model class (its ``__init__`` keywords as
the config keys, the data-derived keys, the ``spec`` layout), which follows diffusers'
signatures and may change with them.  A third-party backbone subclasses ``Backbone``.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor

from harness.backbone import Backbone, DiffusionModel
from harness.errors import OptionError, ShapeError
from harness.registry import did_you_mean


class ConditionedModel(DiffusionModel):
    """A ``DiffusionModel`` that knows its class count (``spec["num_classes"]``, 0: none)."""

    def __init__(
        self, inner: torch.nn.Module, backbone: str, spec: dict[str, Any], taps: list[str]
    ):
        super().__init__(inner, backbone, spec, taps)
        self.num_classes = int(spec.get("num_classes") or 0)


def init_kwargs(cls: type) -> list[str]:
    """The keyword arguments of a diffusers model's ``__init__``."""
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]


def resolve(
    backbone: str,
    presets: dict[str, dict[str, Any]],
    preset: str | None,
    default_preset: str,
    config: dict[str, Any] | None,
    valid: list[str],
    derived: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """Merge ``presets[preset]`` with ``config`` and check every key; return (preset, arch).

    ``valid``: the accepted architecture keys; ``derived``: key -> the ``build`` argument
    that sets it (rejected in ``config`` with a message naming that argument).
    """
    name = default_preset if preset is None else preset
    if name not in presets:
        raise OptionError(
            f"{backbone} has no preset {name!r}{did_you_mean(name, presets)}; "
            f"valid presets: {', '.join(presets)}"
        )
    arch = dict(presets[name])
    for key, value in (config or {}).items():
        if key in derived:
            raise OptionError(
                f"{backbone} config key {key!r} is set by build's {derived[key]!r} argument; "
                "remove it from config"
            )
        if key not in valid:
            raise OptionError(
                f"{backbone} has no config key {key!r}{did_you_mean(key, valid)}; "
                f"valid keys: {', '.join(sorted(valid))}"
            )
        arch[key] = list(value) if isinstance(value, tuple) else value
    for key, value in arch.items():
        if isinstance(value, tuple):
            arch[key] = list(value)
    return name, arch


def check_common(backbone: str, image_size: int, channels: int, num_classes: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise OptionError(f"{backbone}: image_size must be a positive integer, got {image_size!r}")
    if not isinstance(channels, int) or channels < 1:
        raise OptionError(f"{backbone}: channels must be a positive integer, got {channels!r}")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise OptionError(f"{backbone}: num_classes must be an integer >= 0, got {num_classes!r}")


def class_labels(
    cond: Any, num_classes: int, batch: int, device: torch.device, what: str, extra_rows: int = 0
) -> Tensor | None:
    """Integer labels ``[B]`` for a class-conditional model, ``None`` for an unconditional one.

    Unconditional models ignore ``cond`` (data sets give label 0 there).  A conditional
    model needs labels in ``[0, num_classes + extra_rows)``; ``extra_rows`` admits a null
    class row where the model has one.
    """
    if num_classes == 0:
        return None
    if cond is None:
        raise ShapeError(
            f"{what} is class-conditional ({num_classes} classes): pass labels [B] as cond"
        )
    if not isinstance(cond, Tensor) or cond.dim() != 1 or cond.shape[0] != batch:
        shape = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
        raise ShapeError(f"{what}: cond must be integer labels of shape [{batch}], got {shape}")
    if cond.is_floating_point():
        raise ShapeError(f"{what}: cond labels must be integers, got {cond.dtype}")
    return cond.to(device=device, dtype=torch.long)


def timesteps(t: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """``t`` as a float tensor of shape ``[B]`` (a scalar is broadcast)."""
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ShapeError(f"timesteps must have shape [{batch}], got {tuple(t.shape)}")
    return t.float()


def pretrained_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` kwargs; without ``accelerate`` installed, load the plain way."""
    import importlib.util

    out = dict(kwargs)
    if importlib.util.find_spec("accelerate") is None:
        out.setdefault("low_cpu_mem_usage", False)
    return out


def check_patch_size(backbone: str, image_size: int, arch: dict[str, Any], label: str) -> None:
    """A transformer backbone patchifies the image: its size must be a multiple of the patch."""
    patch = arch.get("patch_size", 2)
    if image_size % patch:
        raise OptionError(
            f"{backbone} {label}: image_size {image_size} must be divisible by the patch size "
            f"{patch}"
        )


class DiffusersBackbone(Backbone):
    """A backbone wrapping one diffusers model class: ``build``, ``from_pretrained``'s
    common part and ``check_image_size`` from a few class attributes and hooks.

    Subclasses set ``model_class`` (the diffusers class), ``wrapper`` (the
    ``ConditionedModel`` subclass), ``derived`` (config keys set by ``build``'s arguments),
    and implement ``model_kwargs`` (the ``model_class`` keywords for one build) and
    ``taps``; ``wrapper_keys`` are options of the wrapper (key -> default) accepted in the
    config but not passed to ``model_class``.
    """

    # Every built-in backbone has the CPU ladder xxs..l and defaults to "s".
    default_preset: ClassVar[str] = "s"
    cpu_presets: ClassVar[tuple[str, ...]] = ("xxs", "xs", "s", "m", "l")
    model_class: ClassVar[type]
    wrapper: ClassVar[type[ConditionedModel]]
    derived: ClassVar[dict[str, str]] = {}
    wrapper_keys: ClassVar[dict[str, Any]] = {}
    # What the diffusers constructor raises for a config it cannot build.
    invalid_config_errors: ClassVar[tuple[type[Exception], ...]] = (ValueError, TypeError)

    # -- hooks -----------------------------------------------------------------------------
    def model_kwargs(
        self, arch: dict[str, Any], image_size: int, channels: int, num_classes: int
    ) -> dict[str, Any]:
        """The ``model_class`` keywords for ``arch`` (may normalise ``arch`` in place)."""
        raise NotImplementedError

    def taps(self, inner: torch.nn.Module) -> list[str]:
        """The module paths whose outputs are the model's feature taps, in depth order."""
        raise NotImplementedError

    def check_arch(self, arch: dict[str, Any]) -> None:
        """Checks of the merged architecture beyond its keys (none by default)."""

    def check_size(self, image_size: int, arch: dict[str, Any], label: str) -> None:
        """A transformer patchifies the image: its size must be a multiple of the patch."""
        check_patch_size(self.name, image_size, arch, label)

    def prepare(self, inner: torch.nn.Module) -> None:
        """Adjust a freshly built or loaded diffusers model (nothing by default)."""

    # -- shared ----------------------------------------------------------------------------
    def valid_keys(self) -> list[str]:
        keys = [k for k in init_kwargs(self.model_class) if k not in self.derived]
        return keys + list(self.wrapper_keys)

    def resolve(self, preset: str | None, config: dict[str, Any] | None) -> tuple[str, dict]:
        """(preset name, merged architecture) with every key checked."""
        name, arch = resolve(
            self.name,
            self.presets,
            preset,
            self.default_preset,
            config,
            self.valid_keys(),
            self.derived,
        )
        for key, default in self.wrapper_keys.items():
            arch.setdefault(key, default)
        self.check_arch(arch)
        return name, arch

    def check_image_size(self, image_size: int, preset: str | None = None) -> None:
        name, arch = self.resolve(preset, None)
        self.check_size(image_size, arch, repr(name))

    def spec(self, preset: str | None, arch: dict[str, Any], **data: Any) -> dict[str, Any]:
        """The model's ``spec``: backbone, preset, config, then the data-derived fields."""
        return {"backbone": self.name, "preset": preset, "config": arch, **data}

    def build(
        self,
        preset: str | None = None,
        *,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        config: dict[str, Any] | None = None,
    ) -> ConditionedModel:
        check_common(self.name, image_size, channels, num_classes)
        name, arch = self.resolve(preset, config)
        self.check_size(image_size, arch, repr(name))
        kwargs = self.model_kwargs(arch, image_size, channels, num_classes)
        try:
            inner = self.model_class(**kwargs)
        except self.invalid_config_errors as exc:
            raise OptionError(f"{self.name} config is invalid: {exc}") from exc
        self.prepare(inner)
        spec = self.spec(
            name, arch, image_size=image_size, channels=channels, num_classes=num_classes
        )
        return self.wrapper(inner, self.name, spec, self.taps(inner))

    def load_pretrained(self, path_or_id: str, kwargs: dict[str, Any]) -> torch.nn.Module:
        """``model_class.from_pretrained``; a missing or unreadable model is an OptionError."""
        try:
            inner = self.model_class.from_pretrained(path_or_id, **pretrained_kwargs(kwargs))
        except (OSError, ValueError) as exc:
            raise OptionError(f"{self.name}: cannot load pretrained {path_or_id!r}: {exc}") from exc
        self.prepare(inner)
        return inner

    def check_predicts_input(self, path_or_id: str, cfg: dict[str, Any], target: str) -> None:
        """A loaded model must map its input channels to as many (``target`` of them)."""
        if cfg["in_channels"] != cfg["out_channels"]:
            raise OptionError(
                f"{self.name}: {path_or_id!r} maps {cfg['in_channels']} to "
                f"{cfg['out_channels']} channels; kdbench needs a model that predicts "
                f"{target} of its input"
            )

    def arch_of(self, cfg: dict[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """The architecture config of a loaded model's diffusers ``config``."""
        valid = set(init_kwargs(self.model_class)) - set(self.derived) - set(exclude)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in valid}
