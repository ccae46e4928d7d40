"""The training loop shared by teacher pretraining, assistant (TAKD) and student KD.

One step: ``x0 -> process.training_example -> teacher/student forward (+ taps) ->
lambda_diff * L_diff + objective terms -> clip -> AdamW step -> EMA update``.

Loss scale (``loss_reduction``): ``"mean"`` (default) averages every term over all
elements.  ``"sum"`` trains as Diff-Pruning's code does (LIFT/PLACE Table 6/8 runs): the
denoising loss and every objective on the prediction are summed over C*H*W and averaged
over the batch, i.e. multiplied by C*H*W, so gradient clipping and Adam's epsilon act on
the official scale.  Objectives on features (``needs_features``, e.g. ``featkd``) choose
their own reduction (``featkd(reduction="sum")`` sums each layer over its C_l*H_l*W_l).
``grad_clip_scope="model"`` clips the student's gradients only, as all three official
codebases do (objective parameters such as FeatKD adapters are then stepped unclipped).
Learning rate: ``"constant"`` (after the optional linear warm-up, unchanged) or
``"cosine"`` from ``lr`` to ``lr_min`` over the run, computed by ``timm.scheduler``
(TinyFusion: 2e-4 to 1e-4, no warm-up), with ``warmup_steps`` as timm's linear warm-up.

Fairness: every random draw of a step (batch indices, noise, timesteps) is a function of
``(seed, step)`` alone (``StepRandomness``), so at the same seed every objective sees the
same data, noise and timesteps, and a resumed run continues exactly where it stopped.
The teacher's outputs are therefore a function of (teacher, seed, step) and can be
computed once and reused by every objective (``harness.teacher_cache``).
An objective's own parameters (FeatKD adapters) are drawn in ``setup`` from torch's global
generator, which torch seeds from the OS in every new process: ``train`` seeds it for that
call from the seed alone (``objective_init_seed``, a stream apart from the student's
``torch.manual_seed(seed)`` init) and restores it after, so a cell's adapters, and with
them every number it logs, are the same in any process, whatever ran before in it.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from harness.errors import CheckpointError, DivergedError
from harness.objective import Combination, Outputs, finite_terms
from harness.schema import TRAIN_PREFIX
from harness.storage import load_tensors, read_metadata, save_tensors

MiB = 1024 * 1024


@dataclass
class LoopSettings:
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    ema_decay: float = 0.99
    lambda_diff: float = 1.0
    log_every: int = 25
    checkpoint_every: int = 250
    diverge_factor: float = 1e3
    precision: str = "auto"
    loss_reduction: str = "mean"
    grad_clip_scope: str = "all"
    lr_schedule: str = "constant"
    lr_min: float = 0.0

    @classmethod
    def from_section(cls, section: Any, **overrides: Any) -> LoopSettings:
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in section.model_dump().items() if k in names}
        values.update(overrides)
        return cls(**values)


class StepRandomness:
    """Batch indices, noise and timestep draws as a pure function of (seed, step)."""

    def __init__(self, num_items: int, batch_size: int, seed: int):
        self.n, self.b, self.seed = num_items, batch_size, seed
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> Tensor:
        pos = step * self.b + torch.arange(self.b)
        epochs, offsets = pos // self.n, pos % self.n
        return (
            torch.stack([self._perm(int(e))[int(o)] for e, o in zip(epochs, offsets)])
            if epochs.unique().numel() > 1
            else self._perm(int(epochs[0]))[offsets]
        )

    def noise(self, step: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed((self.seed + 1) * 2_147_483_647 + step)
        return torch.randn((self.b, *shape), generator=g), torch.rand(self.b, generator=g)


@dataclass
class Batch:
    step: int
    x_t: Tensor
    t: Tensor
    cond: Tensor | None
    target: Tensor


class BatchMaker:
    """Builds the training batch of a step from in-memory data (same for every objective)."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        process: Any,
        batch_size: int,
        seed: int,
        device: torch.device,
    ):
        self.images, self.labels, self.process = images, labels, process
        self.seed = seed
        self.rand = StepRandomness(len(images), batch_size, seed)
        self.device = device

    def __call__(self, step: int) -> Batch:
        idx = self.rand.indices(step)
        x0 = self.images[idx]
        noise, u = self.rand.noise(step, tuple(x0.shape[1:]))
        x_t, t, target = self.process.training_example(x0, noise, u)
        cond = self.labels[idx] if self.labels is not None else None
        dev = self.device
        return Batch(
            step, x_t.to(dev), t.to(dev), None if cond is None else cond.to(dev), target.to(dev)
        )


class TeacherSource:
    """Gives the teacher's ``Outputs`` for a step's batch (live forward or cache)."""

    seconds: float = 0.0

    def __call__(self, batch: Batch) -> Outputs:
        raise NotImplementedError


class LiveTeacher(TeacherSource):
    """A frozen teacher in eval mode under no_grad, with paired feature taps if needed."""

    def __init__(
        self,
        model: nn.Module,
        pairs: dict[str, str] | None = None,
        autocast: Callable[[], Any] = contextlib.nullcontext,
    ):
        from harness.features import FeatureRecorder

        self.model = model.eval().requires_grad_(False)
        self.pairs = pairs or {}
        self._taps = list(dict.fromkeys(self.pairs.values()))  # distinct, in depth order
        self._recorder = FeatureRecorder
        self._autocast = autocast
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Outputs:
        start = time.perf_counter()
        with self._autocast():
            if self.pairs:
                with self._recorder(self.model, self._taps) as rec:
                    pred = self.model(batch.x_t, batch.t, batch.cond)
                feats = {s: rec.features[t].float() for s, t in self.pairs.items()}
            else:
                pred, feats = self.model(batch.x_t, batch.t, batch.cond), {}
        out = Outputs(pred.float(), feats)
        _sync(batch.x_t.device)
        self.seconds += time.perf_counter() - start
        return out


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module
    steps_done: int
    iter_per_s: float
    peak_mem_mb: float
    time_train_s: float
    teacher_share: float
    last_terms: dict[str, float] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on GPU; the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MiB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / MiB


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def objective_init_seed(seed: int) -> int:
    """The seed an objective's parameters are initialised from at training seed ``seed``.

    A hash of ``seed``, so the stream is apart from the student's ``torch.manual_seed(seed)``
    (adapters drawn from the same stream would copy the student's first weights).
    """
    from harness.ids import stable_hash

    return int(stable_hash(["objective parameters", seed], 15), 16)


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Inside, torch's global generators (CPU, and ``device``'s) start from ``seed``; after,
    they are as before.  torch seeds the CPU one from the OS in each process, so anything
    drawn from it without this differs from process to process."""
    accel = device.type != "cpu"
    if accel:
        index = device.index
        devices = [
            torch.get_device_module(device.type).current_device() if index is None else index
        ]
    else:
        devices = []
    with torch.random.fork_rng(devices=devices, device_type=device.type if accel else None):
        torch.manual_seed(seed)  # every device; only this one's state is used and restored
        yield


def autocast_for(device: torch.device, precision: str) -> Callable[[], Any]:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# ------------------------------------------------------------------ checkpoints


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    step: int,
    model: nn.Module,
    ema: nn.Module,
    objective: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
) -> None:
    import json

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    if objective is not None:
        tensors.update({f"objective.{k}": v for k, v in objective.state_dict().items()})
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    meta = {"step": str(step), "optimizer": json.dumps(opt_meta), "extra": json.dumps(extra)}
    save_tensors(path, tensors, metadata=meta)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    ema: nn.Module,
    objective: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> tuple[int, dict[str, Any]]:
    import json

    tensors = load_tensors(path, device=device)
    meta = read_metadata(path)
    try:

        def part(prefix: str) -> dict[str, Tensor]:
            n = len(prefix)
            return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}

        model.load_state_dict(part("model."))
        ema.load_state_dict(part("ema."))
        if objective is not None:
            objective.load_state_dict(part("objective."))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, json.loads(meta["optimizer"])))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: does not fit this model ({str(exc).splitlines()[0]})"
        ) from exc
    return int(meta["step"]), json.loads(meta.get("extra", "{}"))


# ------------------------------------------------------------------ the loop


class DivergenceMonitor:
    """NaN/inf, or a loss above ``factor`` x the median of the first 20 logged losses."""

    def __init__(self, factor: float, reference: float | None = None):
        self.factor = factor
        self.early: list[float] = []
        self.reference = reference

    def check(self, step: int, loss: float, terms: dict[str, float]) -> None:
        if not math.isfinite(loss):
            raise DivergedError(step, f"loss is {loss}", terms)
        if self.reference is None:
            self.early.append(loss)
            if len(self.early) >= 20:
                self.reference = sorted(self.early)[len(self.early) // 2]
        elif loss > self.factor * max(self.reference, 1e-8):
            raise DivergedError(
                step, f"loss {loss:.4g} > {self.factor:g} x early loss {self.reference:.4g}", terms
            )


def lr_setter(optimizer: torch.optim.Optimizer, settings: LoopSettings) -> Callable[[int], None]:
    """A function ``step -> None`` that sets the learning rate of ``step`` (0-based).

    ``constant``: ``lr`` after a linear warm-up ``lr * (step + 1) / warmup_steps``.
    ``cosine``: timm's ``CosineLRScheduler`` evaluated at update ``step`` (the closed form
    of ``torch.optim.lr_scheduler.CosineAnnealingLR`` that TinyFusion steps every
    iteration): ``lr_min + (lr - lr_min) (1 + cos(pi step / steps)) / 2``, after timm's
    linear warm-up from 0 when ``warmup_steps`` is set.  Both are functions of the step
    alone, so a resumed run continues the schedule exactly.
    """
    if settings.lr_schedule == "cosine":
        from timm.scheduler import CosineLRScheduler

        for group in optimizer.param_groups:
            group["lr"] = settings.lr
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=max(1, settings.steps - settings.warmup_steps),
            lr_min=settings.lr_min,
            warmup_t=settings.warmup_steps,
            warmup_lr_init=0.0,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        return lambda step: scheduler.step_update(step)

    def constant(step: int) -> None:
        lr = (
            settings.lr * min(1.0, (step + 1) / settings.warmup_steps)
            if settings.warmup_steps
            else settings.lr
        )
        for group in optimizer.param_groups:
            group["lr"] = lr

    return constant


def step_loss(
    student: Outputs,
    teacher: Outputs | None,
    target: Tensor,
    settings: LoopSettings,
    objective: Combination | None,
    step: int,
) -> dict[str, Tensor]:
    """The terms of one step: ``diff``, the objective's terms, ``kd`` and ``loss``.

    ``loss = lambda_diff * diff + kd`` with ``kd = sum_k weight_k * loss_k``.  Under
    ``loss_reduction="sum"`` ``diff`` and every objective that works on the prediction are
    multiplied by C*H*W (sum over elements, mean over the batch, as Diff-Pruning); the
    logged ``diff``, ``kd`` and ``<name>/loss`` are then the summed values.
    """
    diff = torch.mean((student.pred - target.float()) ** 2)
    per_sample = student.pred[0].numel() if settings.loss_reduction == "sum" else 1
    terms: dict[str, Tensor] = {"diff": diff * per_sample if per_sample != 1 else diff}
    loss = settings.lambda_diff * terms["diff"]
    if objective is not None and teacher is not None:
        kd_terms = objective(
            student=student, teacher=teacher, step=step, total_steps=settings.steps
        )
        for key, value in kd_terms.items():
            terms[key if key != "loss" else "kd"] = value  # already "name/term"
        if per_sample != 1:
            kd = student.pred.new_zeros(())
            for weight, part in zip(objective.weights, objective.parts):
                key = f"{part.name}/loss"
                if not part.needs_features:
                    terms[key] = terms[key] * per_sample
                if weight:
                    kd = kd + weight * terms[key]
            terms["kd"] = kd
        loss = loss + terms["kd"]
    terms["loss"] = loss
    return terms


def train(
    model: nn.Module,
    *,
    batches: BatchMaker,
    settings: LoopSettings,
    objective: Combination | None = None,
    teacher: TeacherSource | None = None,
    pairs: dict[str, str] | None = None,
    checkpoint: Path | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
    device: torch.device | str = "cpu",
    progress: str | None = None,
) -> TrainResult:
    """Train ``model`` for ``settings.steps`` steps (resuming from ``checkpoint`` if present).

    With no teacher this is plain denoising training (teacher pretraining).  Raises
    ``DivergedError`` on NaN/inf or an exploding loss.
    """
    from harness.features import FeatureRecorder

    device = torch.device(device)
    model.to(device).train()
    autocast = autocast_for(device, settings.precision)
    kd = objective is not None and teacher is not None
    taps = list(pairs) if (kd and objective.needs_features and pairs) else []

    def forward_student(batch: Batch) -> Outputs:
        with autocast():
            if taps:
                with FeatureRecorder(model, taps) as rec:
                    pred = model(batch.x_t, batch.t, batch.cond)
                return Outputs(pred.float(), {k: v.float() for k, v in rec.features.items()})
            return Outputs(model(batch.x_t, batch.t, batch.cond).float())

    if kd:
        objective.to(device)
        first = batches(0)
        with torch.no_grad(), seeded_rng(objective_init_seed(batches.seed), device):
            objective.setup(forward_student(first), teacher(first))
        teacher.seconds = 0.0
    params = list(model.parameters()) + (list(objective.parameters()) if kd else [])
    clipped = params if settings.grad_clip_scope == "all" else list(model.parameters())
    # foreach: one multi-tensor kernel per update instead of a dozen small ops per
    # parameter tensor (183 of them in the bench's 38k student); on CPU it gives the same
    # bits as the per-tensor loop (benchmarks/bench_step.py checks) and is the default
    # on GPUs already.  ``fused`` and channels_last were faster here but change the bits.
    optimizer = torch.optim.AdamW(
        params,
        lr=settings.lr,
        betas=tuple(settings.betas),
        weight_decay=settings.weight_decay,
        foreach=True,
    )
    set_lr = lr_setter(optimizer, settings)
    ema = make_ema(model, settings.ema_decay)
    start_step, extra = 0, {}
    if checkpoint is not None and checkpoint.exists():
        start_step, extra = load_checkpoint(
            checkpoint, model, ema, objective if kd else None, optimizer, device
        )
    monitor = DivergenceMonitor(settings.diverge_factor, extra.get("loss_reference"))

    from tqdm.auto import tqdm

    bar = tqdm(
        total=settings.steps,
        initial=start_step,
        desc=progress,
        leave=False,
        disable=progress is None or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    warmup_skip = min(5, max(0, settings.steps - start_step - 1))
    timed_from: float | None = None
    timed_steps = 0
    teacher_seconds_at_timing = 0.0
    last: dict[str, float] = {}
    step = start_step
    try:
        for step in range(start_step, settings.steps):
            if step - start_step == warmup_skip:
                _sync(device)
                timed_from = time.perf_counter()
                teacher_seconds_at_timing = teacher.seconds if teacher else 0.0
            set_lr(step)
            batch = batches(step)
            student_out = forward_student(batch)
            teacher_out = teacher(batch) if kd else None
            terms = step_loss(
                student_out, teacher_out, batch.target, settings, objective if kd else None, step
            )
            loss = terms["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(clipped, settings.grad_clip, foreach=True)
            optimizer.step()
            ema.update_parameters(model)
            if timed_from is not None:
                timed_steps += 1
            if step % settings.log_every == 0 or step == settings.steps - 1:
                last = finite_terms(terms)
                monitor.check(step, last["loss"], last)
                if log is not None:
                    log(step, {f"{TRAIN_PREFIX}{k}": v for k, v in last.items()})
            elif device.type == "cpu" and not math.isfinite(loss.item()):
                monitor.check(step, loss.item(), finite_terms(terms))
            bar.update(1)
            done = step + 1
            if (
                checkpoint is not None
                and done % settings.checkpoint_every == 0
                and done < settings.steps
            ):
                save_checkpoint(
                    checkpoint,
                    done,
                    model,
                    ema,
                    objective if kd else None,
                    optimizer,
                    {"loss_reference": monitor.reference},
                )
    finally:
        bar.close()
    _sync(device)
    elapsed = time.perf_counter() - timed_from if timed_from is not None else float("nan")
    teacher_time = (teacher.seconds - teacher_seconds_at_timing) if teacher else 0.0
    return TrainResult(
        model=model,
        ema=ema.module,
        steps_done=settings.steps,
        iter_per_s=timed_steps / elapsed if timed_steps and elapsed > 0 else float("nan"),
        peak_mem_mb=peak_memory_mb(device),
        time_train_s=elapsed,
        teacher_share=teacher_time / elapsed if timed_steps and elapsed > 0 else float("nan"),
        last_terms=last,
    )
