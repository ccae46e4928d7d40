"""Save and load ``DiffusionModel``s as verified safetensors files and as diffusers folders.

A model file is written by ``harness.storage.save_tensors`` (atomic, with a SHA-256
sidecar) and holds the ``state_dict`` plus one metadata entry ``kdbench`` (JSON:
``format``, ``backbone``, ``spec``, ``extra``).  ``load_model`` rebuilds the architecture
from the spec alone (``build_from_spec``) and loads the weights strictly.  A pruned
model's spec names its base spec and the new width of every pruned layer; the base is
built, each listed layer is shrunk with Torch-Pruning's own per-layer functions, and then
the weights are loaded (no pickles, no tracing at load time).

``save_pretrained`` writes what a diffusers user expects: a model folder (``config.json`` +
``diffusion_pytorch_model.safetensors``, from the wrapped model's own ``save_pretrained``)
plus ``scheduler/`` (the process's sampler: ``DDIMScheduler`` for DDPM models,
``FlowMatchEulerDiscreteScheduler`` for rectified flows) and ``kdbench.json`` (backbone,
spec, process).  An unpruned model loads with the diffusers class' ``from_pretrained``.  A
pruned model's layer widths are not expressible in a diffusers config (Torch-Pruning keeps,
e.g., the sinusoidal time embedding at the base width while the first block shrinks), so
its ``config.json`` is the base architecture's and ``load_pretrained`` rebuilds the pruned
widths from ``kdbench.json`` before loading the weights strictly; the result wraps the same
diffusers class, which goes into the diffusers pipeline as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.backbone import DiffusionModel
from harness.errors import CheckpointError, KDBenchError, OptionError
from harness.storage import load_tensors, read_metadata, save_tensors

FORMAT = 1
META_KEY = "kdbench"
EXTRA_FILE = "kdbench_extra.safetensors"  # wrapper-owned weights beside a diffusers export
FOLDER_META = "kdbench.json"  # backbone, spec and process beside a diffusers export
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # diffusers' name for a model's weights
SCHEDULER_DIR = "scheduler"


def build_from_spec(spec: dict[str, Any]) -> DiffusionModel:
    """The (untrained) architecture a spec describes, pruned ones included."""
    from harness.registry import lookup

    if "pruned_from" in spec:
        from harness.pruning import apply_widths

        model = build_from_spec(spec["pruned_from"])
        apply_widths(model, spec.get("layers", {}))
        model.spec = dict(spec)
        return model
    backbone = lookup("backbone", spec["backbone"])()
    return backbone.build(
        spec.get("preset"),
        image_size=spec["image_size"],
        channels=spec["channels"],
        num_classes=spec.get("num_classes", 0),
        config=spec.get("config"),
    )


def save_model(
    model: DiffusionModel, path: str | Path, extra_meta: dict[str, Any] | None = None
) -> None:
    """Write ``model`` (weights + spec) to ``path`` atomically, with a .sha256 sidecar."""
    if not isinstance(model, DiffusionModel):
        raise OptionError(f"save_model needs a DiffusionModel, got {type(model).__name__}")
    meta = {
        "format": FORMAT,
        "backbone": model.backbone,
        "spec": model.spec,
        "extra": extra_meta or {},
    }
    try:
        text = json.dumps(meta, sort_keys=True)
    except TypeError as exc:
        raise OptionError(f"model spec or extra_meta is not JSON-able: {exc}") from exc
    save_tensors(path, model.state_dict(), metadata={META_KEY: text})


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The ``kdbench`` metadata of a model file (backbone, spec, extra)."""
    raw = read_metadata(path).get(META_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: not a kdbench model file (no '{META_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: unreadable kdbench metadata") from exc
    if not isinstance(meta, dict) or "spec" not in meta or "backbone" not in meta:
        raise CheckpointError(f"{path}: kdbench metadata lacks backbone/spec")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: model file format {meta.get('format')!r}; this kdbench reads {FORMAT}"
        )
    return meta


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", *, backbone: str | None = None
) -> DiffusionModel:
    """Rebuild and load a model written by ``save_model`` (verified; strict).

    ``backbone``: when given, a file holding another backbone raises ``CheckpointError``.
    """
    tensors = load_tensors(path, device="cpu")
    meta = read_model_meta(path)
    if backbone is not None and meta["backbone"] != backbone:
        raise CheckpointError(f"{path}: holds a {meta['backbone']} model, expected {backbone}")
    try:
        model = build_from_spec(meta["spec"])
    except KDBenchError as exc:
        raise CheckpointError(
            f"{path}: cannot rebuild its {meta['backbone']} model: {exc}"
        ) from exc
    _load_strict(model, tensors, path, meta["backbone"])
    return model.to(map_location)


def _load_strict(model: torch.nn.Module, tensors: dict, path: Any, backbone: str) -> None:
    """``load_state_dict(strict=True)`` with one clear error naming what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise CheckpointError(
            f"{path}: weights do not fit the {backbone} architecture in its metadata "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another "
            f"shape, e.g. {first!r})"
        )
    model.load_state_dict(tensors, strict=True)


def export_diffusers(model: DiffusionModel, folder: str | Path) -> Path:
    """``save_pretrained`` of the wrapped diffusers model (unpruned models only).

    Weights the wrapper owns outside the diffusers model (MMDiT's label tables) go beside
    it as ``kdbench_extra.safetensors``, which the backbone's ``from_pretrained`` reads back.
    """
    if "pruned_from" in model.spec:
        raise OptionError(
            "export_diffusers needs an unpruned model: a pruned model's widths are not a "
            "diffusers config; use save_model"
        )
    folder = Path(folder)
    model.inner.save_pretrained(str(folder))
    _save_extra(model, folder)
    return folder


def _save_extra(model: DiffusionModel, folder: Path) -> None:
    extra = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("inner.")
    }
    if extra:
        from safetensors.torch import save_file

        save_file(extra, str(folder / EXTRA_FILE))


def save_pretrained(model: DiffusionModel, folder: str | Path, process: Any = None) -> Path:
    """``model`` as a diffusers model folder (see the module docstring), pruned or not.

    ``process`` (a ``harness.process.Process``): its sampler goes to ``scheduler/`` and its
    name and options to ``kdbench.json``.
    """
    if not isinstance(model, DiffusionModel):
        raise OptionError(f"save_pretrained needs a DiffusionModel, got {type(model).__name__}")
    folder = Path(folder)
    meta: dict[str, Any] = {"format": FORMAT, "backbone": model.backbone, "spec": model.spec}
    if process is not None:
        meta["process"] = {"name": process.name, "options": process.options}
        meta["prediction"] = process.prediction
    try:
        text = json.dumps(meta, indent=2, sort_keys=True)
    except TypeError as exc:
        raise OptionError(f"model spec or process options are not JSON-able: {exc}") from None
    if "pruned_from" in model.spec:
        folder.mkdir(parents=True, exist_ok=True)
        model.inner.save_pretrained(str(folder))  # the base config, the pruned weights
        _save_extra(model, folder)
    else:
        export_diffusers(model, folder)
    if process is not None:
        process.sampler().save_pretrained(str(folder / SCHEDULER_DIR))
    (folder / FOLDER_META).write_text(text + "\n")
    return folder


def is_kdbench_folder(source: str | Path) -> bool:
    """True for a folder written by ``save_pretrained``."""
    return (Path(source) / FOLDER_META).is_file()


def load_pretrained(
    source: str | Path, map_location: str | torch.device = "cpu", *, backbone: str | None = None
) -> DiffusionModel:
    """A ``DiffusionModel`` from a diffusers folder or hub id, pruned kdbench folders included.

    A source without ``kdbench.json`` (any diffusers model folder, or a hub id) goes to the
    backbone's ``from_pretrained``, so ``backbone`` must name it.  With ``kdbench.json``,
    a ``backbone`` other than the folder's raises ``CheckpointError``.
    """
    from harness.registry import lookup

    if not is_kdbench_folder(source):
        if backbone is None:
            raise CheckpointError(f"{source}: no {FOLDER_META}; name the backbone to load it")
        return lookup("backbone", backbone)().from_pretrained(str(source)).to(map_location)
    folder = Path(source)
    try:
        meta = json.loads((folder / FOLDER_META).read_text())
        spec, kind = dict(meta["spec"]), str(meta["backbone"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{folder}: unreadable {FOLDER_META}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{folder}: {FOLDER_META} format {meta.get('format')!r}; this kdbench reads {FORMAT}"
        )
    if backbone is not None and kind != backbone:
        raise CheckpointError(f"{folder}: holds a {kind} model, expected {backbone}")
    if "pruned_from" not in spec:
        return lookup("backbone", kind)().from_pretrained(str(folder)).to(map_location)
    from safetensors.torch import load_file

    try:
        model = build_from_spec(spec)
    except KDBenchError as exc:
        raise CheckpointError(f"{folder}: cannot rebuild its pruned {kind} model: {exc}") from None
    try:
        tensors = {f"inner.{k}": v for k, v in load_file(str(folder / WEIGHTS_FILE)).items()}
        if (folder / EXTRA_FILE).exists():
            tensors.update(load_file(str(folder / EXTRA_FILE)))
    except Exception as exc:
        raise CheckpointError(f"{folder}: unreadable weights ({_first_line(exc)})") from None
    _load_strict(model, tensors, folder, kind)
    return model.to(map_location)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
