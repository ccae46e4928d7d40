"""Capture a model's feature taps with forward hooks (FitNets-style feature KD).

``FeatureRecorder(model, taps)`` registers one forward hook per tap on entry and removes
them all on exit; ``.features[tap]`` holds the tap's output of the latest forward call,
with its autograd graph (a student's features carry gradients; call the teacher under
``no_grad``).  With no taps nothing is registered, so the recorder costs nothing.

Which tensor a tap records: a module that returns a tensor gives that tensor.  One that
returns a tuple (a diffusers down block returns ``(hidden_states, residuals)``) gives the
element named by ``model.tap_output_index[tap]`` when the model defines it (MMDiT's joint
blocks return ``(context, image)`` and ask for element 1), otherwise its first tensor.
A dict-like output (diffusers ``BaseOutput``) gives its first tensor value.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from harness.errors import OptionError


def first_tensor(output: Any, index: int | None = None) -> Tensor:
    """The tensor a tap records from a module's ``output`` (see the module docstring)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        if index is not None:
            return first_tensor(output[index])
        for item in output:
            if isinstance(item, Tensor):
                return item
    if isinstance(output, dict):
        for item in output.values():
            if isinstance(item, Tensor):
                return item
    raise TypeError(f"tap output of type {type(output).__name__} holds no tensor")


class FeatureRecorder:
    """Context manager: ``with FeatureRecorder(model, taps) as rec: model(...)``;
    then ``rec.features`` maps each tap (a module path of ``model``) to its output."""

    def __init__(self, model: nn.Module, taps: list[str]):
        self.model = model
        self.taps = list(taps)
        self.features: dict[str, Tensor] = {}
        self._handles: list[Any] = []
        if self.taps:
            modules = dict(model.named_modules())
            missing = [t for t in self.taps if t not in modules]
            if missing:
                known = ", ".join(getattr(model, "taps", []) or []) or "none declared"
                raise OptionError(
                    f"model has no module {missing[0]!r} to tap; the model's taps: {known}"
                )
            self._modules = [modules[t] for t in self.taps]

    def _hook(self, tap: str, index: int | None):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.features[tap] = first_tensor(output, index)

        return hook

    def __enter__(self) -> FeatureRecorder:
        if self.taps:
            indices = getattr(self.model, "tap_output_index", None) or {}
            for tap, module in zip(self.taps, self._modules):
                self._handles.append(
                    module.register_forward_hook(self._hook(tap, indices.get(tap)))
                )
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
