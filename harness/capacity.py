"""The models of a capacity grid: base, teachers, students and TAKD assistants.

Every trained model is cached by a hash of everything that determines it, as a verified
safetensors file (``harness.modelio``), built once under a file lock so that parallel
workers share it.  A corrupt cache entry is reported and rebuilt, never loaded.

Construction follows the LIFT/PLACE paper's capacity grid (after Diff-Pruning):
- ``prune = r`` teachers: the pretrained base model pruned at ratio r (Taylor importance,
  Torch-Pruning) and fine-tuned for ``pretrain.finetune_steps``; r = 0 is the base itself.
- ``prune = r`` students: the base pruned at r, *not* fine-tuned: KD training starts from
  the surviving weights.
- ``preset`` models: built from the backbone's size ladder; teachers are pretrained for
  ``pretrain.steps``, students start from a seeded random initialisation.
- ``pretrained``: a diffusers folder / hub id, or a kdbench ``.safetensors`` model file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from harness.config import Capacity, GridConfig, teacher_key
from harness.errors import CheckpointError, ConfigError
from harness.ids import stable_hash

log = logging.getLogger("kdbench")


def default_cache_dir() -> Path:
    """``$KDBENCH_CACHE``, else ``$XDG_CACHE_HOME/kdbench``, else ``~/.cache/kdbench``."""
    if os.environ.get("KDBENCH_CACHE"):
        return Path(os.environ["KDBENCH_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "kdbench"


@dataclass
class Context:
    """What every model-building step of a cell needs."""

    cfg: GridConfig
    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    channels: int
    backbone: Any
    process: Any
    device: torch.device
    cache_dir: Path
    progress: bool = True
    built: list[tuple[str, Path]] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        cfg: GridConfig,
        device: torch.device | str = "cpu",
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ) -> Context:
        from harness.factories import dataset_from_config, get_backbone
        from harness.process import get_process

        ds = dataset_from_config(cfg.dataset)
        images, labels = ds.tensors()
        num_classes = ds.num_classes if cfg.model.conditional else 0
        backbone = get_backbone(cfg.model.backbone)
        process = get_process(cfg.model.process or backbone.default_process)
        folder = Path(cache_dir or cfg.cache.dir or default_cache_dir()).expanduser()
        return cls(
            cfg,
            images,
            labels if num_classes else None,
            num_classes,
            ds.channels,
            backbone,
            process,
            torch.device(device),
            folder,
            progress,
        )

    # ------------------------------------------------------------------ helpers

    def build(self, preset: str | None) -> nn.Module:
        return self.backbone.build(
            preset,
            image_size=self.cfg.dataset.image_size,
            channels=self.channels,
            num_classes=self.num_classes,
            config=self.cfg.model.config or None,
        )

    def _cached(self, kind: str, key: dict[str, Any], make) -> tuple[nn.Module, dict[str, Any]]:
        """Load ``kind/<hash(key)>`` from the cache, or build it with ``make()`` and store it."""
        from harness.modelio import load_model, save_model

        path = self.cache_dir / kind / f"{stable_hash(key, 16)}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            self._copy_shipped(kind, path)
            if path.exists():
                try:
                    model = load_model(path)
                    if (kind, path) not in self.built:
                        self.built.append((kind, path))
                    return model.to(self.device), dict(model.spec.get("_build", {}))
                except CheckpointError as exc:
                    log.warning("cached %s %s is unusable (%s); rebuilding", kind, path.name, exc)
                    path.unlink(missing_ok=True)
            start = time.perf_counter()
            model, meta = make()
            meta = {**meta, "build_seconds": time.perf_counter() - start}
            model.spec["_build"] = meta
            save_model(model.cpu(), path, extra_meta={"key": json.dumps(key, default=str)})
            self.built.append((kind, path))
            return model.to(self.device), meta

    def _copy_shipped(self, kind: str, path: Path) -> None:
        """Seed the cache from ``cache.shipped`` (prebuilt, verified) when it has the entry."""
        shipped = self.cfg.cache.shipped
        if path.exists() or not shipped:
            return
        source = Path(shipped) / kind / path.name
        if not source.exists():
            return
        from harness.storage import verify

        try:
            verify(source)
        except CheckpointError as exc:
            log.warning("shipped %s %s is unusable (%s); building it", kind, source.name, exc)
            return
        for suffix in ("", ".sha256"):
            shutil.copyfile(f"{source}{suffix}", f"{path}{suffix}.part")
        os.replace(f"{path}.sha256.part", f"{path}.sha256")
        os.replace(f"{path}.part", path)
        self.built.append((kind, path))

    def export(self, folder: str | Path) -> list[Path]:
        """Copy every cache entry this context built or used into ``folder`` (for shipping)."""
        out = []
        for kind, path in self.built:
            target = Path(folder) / kind / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            for suffix in ("", ".sha256"):
                shutil.copyfile(f"{path}{suffix}", f"{target}{suffix}")
            out.append(target)
        return out

    def _pretrain(self, model: nn.Module, steps: int, desc: str) -> nn.Module:
        from harness.trainer import BatchMaker, LoopSettings, train

        p = self.cfg.pretrain
        if steps == 0:
            return model
        settings = LoopSettings(
            steps=steps,
            batch_size=p.batch_size,
            lr=p.lr,
            ema_decay=p.ema_decay,
            warmup_steps=p.warmup_steps,
            checkpoint_every=max(steps, 1),
            log_every=max(steps // 10, 1),
        )
        batches = BatchMaker(
            self.images, self.labels, self.process, p.batch_size, p.seed, self.device
        )
        result = train(
            model,
            batches=batches,
            settings=settings,
            device=self.device,
            progress=desc if self.progress else None,
        )
        ema = result.ema
        ema.spec = model.spec
        return ema

    def _prune_batches(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        g = torch.Generator().manual_seed(self.cfg.pretrain.seed)
        out = []
        for _ in range(self.cfg.pretrain.prune_batches):
            idx = torch.randint(len(self.images), (self.cfg.pretrain.batch_size,), generator=g)
            out.append(
                (
                    self.images[idx].to(self.device),
                    None if self.labels is None else self.labels[idx].to(self.device),
                )
            )
        return out

    # ------------------------------------------------------------------ models

    def base(self) -> nn.Module:
        m = self.cfg.model
        if m.base_pretrained is not None:
            return load_pretrained(self, m.base_pretrained)
        key = {"base": teacher_key(self.cfg, Capacity(preset=m.base))}

        def make():
            torch.manual_seed(self.cfg.pretrain.seed)
            model = self.build(m.base).to(self.device)
            return self._pretrain(model, self.cfg.pretrain.steps, f"pretrain base {m.base}"), {}

        return self._cached("base", key, make)[0]

    def pruned(self, ratio: float) -> nn.Module:
        """The base pruned at ``ratio`` (Taylor importance over timesteps), not fine-tuned."""
        from harness.pruning import prune

        if ratio == 0:
            return self.base()
        key = {"pruned": teacher_key(self.cfg, Capacity(prune=ratio))}

        def make():
            base = self.base()
            return prune(
                base, ratio, self._prune_batches(), self.process, seed=self.cfg.pretrain.seed
            ), {}

        return self._cached("pruned", key, make)[0]

    def teacher(self, cap: Capacity) -> nn.Module:
        if cap.pretrained is not None:
            return load_pretrained(self, cap.pretrained)
        key = teacher_key(self.cfg, cap)
        if cap.prune == 0:
            return self.base()

        def make():
            if cap.prune is not None:
                model = self.pruned(cap.prune)
                steps, desc = self.cfg.pretrain.finetune_steps, f"fine-tune {cap.name}"
            else:
                torch.manual_seed(self.cfg.pretrain.seed)
                model = self.build(cap.preset).to(self.device)
                steps, desc = self.cfg.pretrain.steps, f"pretrain {cap.name}"
            return self._pretrain(model, steps, desc), {}

        return self._cached("teachers", key, make)[0]

    def student_init(self, cap: Capacity, seed: int) -> nn.Module:
        if cap.pretrained is not None:
            return load_pretrained(self, cap.pretrained)
        if cap.prune is not None:
            model = self.pruned(cap.prune)
            model.spec.pop("_build", None)
            return model
        torch.manual_seed(seed)
        return self.build(cap.preset).to(self.device)


def check_fits(cfg: GridConfig, channels: int, model: nn.Module, source: str) -> None:
    """CheckpointError unless ``model`` is the grid's backbone at its image size and channels."""
    if getattr(model, "backbone", None) != cfg.model.backbone:
        raise CheckpointError(
            f"{source}: a {getattr(model, 'backbone', '?')} model, but the grid's backbone "
            f"is {cfg.model.backbone}"
        )
    spec = model.spec
    while "pruned_from" in spec:
        spec = spec["pruned_from"]
    size, chans = spec.get("image_size"), spec.get("channels")
    if (size, chans) != (cfg.dataset.image_size, channels):
        raise CheckpointError(
            f"{source}: a model for {size}x{size} images with {chans} channel(s), but the "
            f"grid's data are {cfg.dataset.image_size}x{cfg.dataset.image_size} with "
            f"{channels} channel(s)"
        )


def load_model_file(cfg: GridConfig, channels: int, source: str) -> nn.Module:
    """A kdbench model file (verified safetensors) that fits the grid, else CheckpointError."""
    from harness.modelio import load_model

    if not Path(source).exists():
        raise ConfigError(f"pretrained model {source}: file not found")
    model = load_model(source)
    check_fits(cfg, channels, model, source)
    return model


def load_pretrained(ctx: Context, source: str) -> nn.Module:
    """A kdbench model file (verified safetensors) or a diffusers folder / hub id."""
    if source.endswith(".safetensors"):
        return load_model_file(ctx.cfg, ctx.channels, source).to(ctx.device)
    from harness.modelio import is_kdbench_folder
    from harness.modelio import load_pretrained as load_folder

    if is_kdbench_folder(source):  # e.g. a student saved by eval.save_student, pruned or not
        model = load_folder(source, backbone=ctx.cfg.model.backbone)
    else:
        model = ctx.backbone.from_pretrained(source)
    check_fits(ctx.cfg, ctx.channels, model, source)
    return model.to(ctx.device)


def _assistant_key(
    cfg: GridConfig,
    teacher_cap: Capacity,
    ta_cap: Capacity,
    base_spec: list[dict[str, Any]],
    steps: int,
) -> dict[str, Any]:
    """What determines a trained assistant: not the student's step count or logging."""
    ignored = {"threads", "steps", "assistant_steps", "log_every", "checkpoint_every"}
    train = {k: v for k, v in cfg.train.identity().items() if k not in ignored}
    return {
        "teacher": teacher_key(cfg, teacher_cap),
        "assistant": ta_cap.model_dump(),
        "base": base_spec,
        "train": train,
        "steps": steps,
    }


def assistant(
    ctx: Context,
    teacher_cap: Capacity,
    student_cap: Capacity,
    base_spec: list[dict[str, Any]],
    teacher: nn.Module,
) -> tuple[nn.Module, dict[str, Any]]:
    """A teaching assistant (TAKD), KD-trained from the teacher with the cell's objective.

    The objective that ``needs_assistant`` chooses its capacity
    (``Objective.assistant_capacity``; TAKD: halfway in log-parameters between teacher and
    student, Mirzadeh et al., AAAI 2020).  Returns the model and its build info (``build_seconds``: the
    assistant's training time, which the TAKD cell's cost includes).
    """
    from harness.factories import build_combination
    from harness.models import preset_table
    from harness.trainer import BatchMaker, LiveTeacher, LoopSettings, train

    cfg = ctx.cfg
    chooser = next((p for p in build_combination(base_spec).parts if p.needs_assistant), None)
    if chooser is None:
        raise ConfigError("an assistant was asked for, but no objective of the cell needs one")

    def preset_sizes() -> dict[str, int]:
        rows = preset_table(
            cfg.model.backbone,
            cfg.dataset.image_size,
            channels=ctx.channels,
            num_classes=ctx.num_classes,
        )
        return {row["name"]: row["params"] for row in rows}

    ta_cap = chooser.assistant_capacity(
        teacher_cap,
        student_cap,
        preset_sizes=preset_sizes,
        teacher_params=teacher.num_parameters(),
        student_params=lambda: ctx.student_init(student_cap, cfg.pretrain.seed).num_parameters(),
    )
    steps = cfg.train.assistant_steps or cfg.train.steps
    key = _assistant_key(cfg, teacher_cap, ta_cap, base_spec, steps)

    def make():
        init = ctx.student_init(ta_cap, cfg.pretrain.seed)
        settings = LoopSettings.from_section(cfg.train, steps=steps, checkpoint_every=max(steps, 1))
        batches = BatchMaker(
            ctx.images, ctx.labels, ctx.process, cfg.train.batch_size, cfg.pretrain.seed, ctx.device
        )
        objective = build_combination(base_spec)
        pairs = (
            ctx.backbone.pair_taps(init, teacher, objective.tap_set)
            if objective.needs_features
            else None
        )
        result = train(
            init,
            batches=batches,
            settings=settings,
            objective=objective,
            teacher=LiveTeacher(teacher, pairs if objective.needs_features else None),
            pairs=pairs,
            device=ctx.device,
            progress=f"assistant {ta_cap.name}" if ctx.progress else None,
        )
        ema = result.ema
        ema.spec = init.spec
        return ema, {"capacity": ta_cap.name}

    return ctx._cached("assistants", key, make)
