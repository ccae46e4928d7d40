"""Structured pruning of a U-Net with Diff-Pruning's Taylor importance (Fang et al.,
"Structural Pruning for Diffusion Models", NeurIPS 2023), built on Torch-Pruning.

``prune(model, ratio, batches, process)`` returns a pruned copy (the input is untouched):

1. The diffusion loss ``mean((model(x_t, t, cond) - target)^2)`` is backpropagated at
   ``timesteps`` noise levels ``u_k = k / timesteps`` (ascending, t = 0 first, as
   Diff-Pruning walks the chain) for every batch, accumulating gradients.  As in
   Diff-Pruning, the walk stops at the first level whose loss (summed over the batches)
   falls below ``threshold`` (default 0.05, Diff-Pruning's) times the largest seen so
   far: steps with a small relative loss count as non-contributory and are not summed
   into the estimate (``threshold=0`` uses every level).
2. ``tp.importance.TaylorImportance()`` (first-order Taylor |w * dL/dw|, summed per
   channel; Diff-Pruning's ``multivariable=False`` variant) scores every channel group;
   ``tp.pruner.MetaPruner`` removes the fraction ``ratio`` of the channels of every group
   (local, uniform pruning, so the pruned net keeps the base's proportions).
3. The output conv is ignored (the image channels stay); the input conv's input
   channels are the image and never pruned.  GroupNorm layers group their channels
   (Torch-Pruning reads ``num_groups`` and prunes the same number per group, so the
   group count still divides the width); the q/k/v projections of every attention layer
   are grouped by its head count, so each head loses the same number of dims and the
   head count stays.
4. diffusers' ``Downsample2D``/``Upsample2D`` check their input width against a stored
   ``channels`` attribute; it is updated from their conv, as Diff-Pruning does.

The pruned model keeps the surviving weights.  Its ``spec`` is ``{"backbone", "pruned_from":
base spec, "ratio": r, "layers": {module: [out, in]}}``: ``layers`` lists the new widths of
every pruned layer so ``harness.modelio`` can rebuild the architecture before loading.
Only the U-Net is supported; DiT and MMDiT come in size presets instead.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from harness.backbone import DiffusionModel
from harness.errors import OptionError


def _check(model: DiffusionModel, ratio: float) -> None:
    if getattr(model, "backbone", None) != "unet":
        raise OptionError(
            f"pruning is supported for unet; use presets for {getattr(model, 'backbone', '?')}"
        )
    if "pruned_from" in model.spec:
        raise OptionError("this model is already pruned; prune its base model instead")
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise OptionError(f"pruning ratio must be in [0, 1), got {ratio!r}")


def _pruner_of(module: nn.Module):
    return tp.pruner.function.PrunerBox.get(tp.ops.module2type(module))


def layer_widths(model: nn.Module) -> dict[str, list[int | None]]:
    """``{module path: [out, in]}`` of every layer Torch-Pruning can prune."""
    widths = {}
    for name, module in model.named_modules():
        pruner = _pruner_of(module)
        if pruner is not None and name:
            widths[name] = [pruner.get_out_channels(module), pruner.get_in_channels(module)]
    return widths


def sync_static_widths(model: nn.Module) -> None:
    """Update the widths diffusers' resamplers check at run time (Diff-Pruning does too)."""
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    for module in model.modules():
        if isinstance(module, (Downsample2D, Upsample2D)) and getattr(module, "conv", None):
            module.channels = module.conv.in_channels
            module.out_channels = module.conv.out_channels


def apply_widths(model: nn.Module, layers: dict[str, list[int | None]]) -> None:
    """Shrink every listed layer to ``[out, in]`` (keeping its first channels) with
    Torch-Pruning's per-layer functions; used to rebuild a pruned architecture."""
    modules = dict(model.named_modules())
    for name, (out, inp) in layers.items():
        module = modules.get(name)
        pruner = None if module is None else _pruner_of(module)
        if pruner is None:
            raise OptionError(f"pruned layer {name!r} does not exist in the base model")
        for target, get, cut in (
            (out, pruner.get_out_channels, pruner.prune_out_channels),
            (inp, pruner.get_in_channels, pruner.prune_in_channels),
        ):
            current = get(module)
            if target is None or current is None or target == current:
                continue
            if target > current:
                raise OptionError(
                    f"pruned layer {name!r} is wider ({target}) than its base ({current})"
                )
            cut(module, list(range(target, current)))
    sync_static_widths(model)


def _attention_groups(model: nn.Module) -> dict[nn.Module, int]:
    from diffusers.models.attention_processor import Attention

    groups = {}
    for module in model.modules():
        if isinstance(module, Attention) and module.heads > 1:
            for proj in (module.to_q, module.to_k, module.to_v):
                groups[proj] = module.heads
    return groups


def _accumulate_gradients(
    model: DiffusionModel,
    batches: list[tuple[Tensor, Any]],
    process: Any,
    timesteps: int,
    threshold: float,
    seed: int,
) -> int:
    """Backpropagate the diffusion loss over ascending noise levels; return levels used."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    loss_max = 0.0
    used = 0
    for k in range(timesteps):
        total = 0.0
        for x0, cond in batches:
            x0 = x0.to(device)
            cond = cond.to(device) if isinstance(cond, Tensor) else cond
            noise = torch.randn(x0.shape, generator=generator).to(device)
            u = torch.full((x0.shape[0],), k / timesteps)
            x_t, t, target = process.training_example(x0, noise, u)
            loss = F.mse_loss(model(x_t, t.to(device), cond), target)
            loss.backward()
            total += float(loss.detach())
        used += 1
        loss_max = max(loss_max, total)
        if threshold > 0 and total < threshold * loss_max:
            break
    return used


def prune(
    model: DiffusionModel,
    ratio: float,
    batches: list[tuple[Tensor, Any]],
    process: Any,
    *,
    timesteps: int = 16,
    seed: int = 0,
    threshold: float = 0.05,
) -> DiffusionModel:
    """A copy of the U-Net ``model`` with ``ratio`` of its channels removed (see module doc).

    ``batches``: ``(x0, cond)`` pairs of training images (cond None when unconditional).
    ``timesteps``: noise levels at which gradients are accumulated; ``threshold``:
    Diff-Pruning's early stop; ``seed``: the noise of the importance estimate.
    """
    _check(model, ratio)
    if not isinstance(timesteps, int) or timesteps < 1:
        raise OptionError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    if not 0 <= threshold < 1:
        raise OptionError(f"threshold must be in [0, 1), got {threshold!r}")
    pruned = copy.deepcopy(model)
    base_spec = copy.deepcopy(model.spec)
    if ratio == 0:
        return pruned
    if not batches:
        raise OptionError("pruning needs at least one batch of training images")

    was_training = model.training
    pruned.eval()  # no dropout while estimating importance
    device = next(pruned.parameters()).device
    x0, cond = batches[0]
    n = min(2, x0.shape[0])
    example = (
        x0[:n].to(device),
        torch.zeros(n, device=device),
        None if cond is None else cond[:n].to(device),
    )
    before = layer_widths(pruned)
    with torch.enable_grad():
        pruned.requires_grad_(True)
        pruner = tp.pruner.MetaPruner(
            pruned,
            example_inputs=example,
            importance=tp.importance.TaylorImportance(),
            pruning_ratio=float(ratio),
            ignored_layers=[pruned.inner.conv_out],
            out_channel_groups=_attention_groups(pruned),
            forward_fn=lambda m, inputs: m(*inputs),
        )
        pruned.zero_grad(set_to_none=True)
        _accumulate_gradients(pruned, batches, process, timesteps, threshold, seed)
        pruner.step()
    pruned.zero_grad(set_to_none=True)
    sync_static_widths(pruned)
    pruned.train(was_training)
    after = layer_widths(pruned)
    layers = {name: after[name] for name in after if after[name] != before.get(name)}
    pruned.spec = {
        "backbone": model.backbone,
        "pruned_from": base_spec,
        "ratio": float(ratio),
        "layers": layers,
        "image_size": base_spec.get("image_size"),
        "channels": base_spec.get("channels"),
        "num_classes": base_spec.get("num_classes"),
    }
    return pruned
