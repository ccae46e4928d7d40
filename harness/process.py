"""Diffusion processes: how a training example is noised, and how samples are drawn.

Both processes are deterministic given their inputs: the trainer draws ``noise`` and a
uniform ``u`` in [0, 1) per sample from its own seeded generator and passes them in, so
every objective sees the same examples at the same seed.  Timesteps handed to models are
float tensors ``[B]`` in [0, 1000): the integer DDPM step, or ``1000 * sigma`` for flows.

- ``ddpm`` (Ho et al., NeurIPS 2020): epsilon prediction, diffusers ``DDPMScheduler``
  (linear betas 1e-4..0.02, T = 1000) adds the noise at step ``floor(u * T)``; sampling
  is DDIM (Song et al., ICLR 2021) with eta = 0 through diffusers ``DDIMScheduler``,
  ``timestep_spacing="trailing"`` by default so the first step starts at t = T - 1 where
  x_T is pure noise (Lin et al., WACV 2024), and ``clip_sample=True`` (the predicted x0
  is clipped to [-1, 1], as in the DDPM/DDIM pixel-space models).  The sample is the last
  step's x0 estimate (the chain's t = 0 state would keep 1% noise).
- ``flow`` (rectified flow; Liu et al., ICLR 2023; Esser et al., SD3, ICML 2024):
  ``x_t = (1 - sigma) x0 + sigma * noise``, velocity target ``noise - x0``.  ``sigma`` is
  ``u`` (uniform, the default) or the logit-normal ``sigmoid(m + s * Phi^-1(u))`` that SD3
  trains with (``timestep_sampling="logit_normal"``), then SD3's shift
  ``shift * sigma / (1 + (shift - 1) * sigma)`` (``shift=1``: none).  Sampling is Euler
  through diffusers ``FlowMatchEulerDiscreteScheduler`` with the same shift.

Samples are clamped to [-1, 1].
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from harness.errors import OptionError, ShapeError

ModelFn = Callable[[Tensor, Tensor, Any], Tensor]


class Process:
    """Base class: ``training_example`` and ``sample`` (see the module docstring)."""

    name: ClassVar[str] = ""
    prediction: ClassVar[str] = ""  # "epsilon" | "velocity"
    num_train_timesteps: int = 1000
    sampler_name: ClassVar[str] = ""  # the progress bar's label
    step_options: ClassVar[dict[str, Any]] = {}  # for every ``scheduler.step`` of ``sample``

    def training_example(
        self, x0: Tensor, noise: Tensor, u: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_t, t, target)`` for clean images ``x0``, noise like ``x0`` and ``u`` [B]."""
        raise NotImplementedError

    def sampler(self) -> Any:
        """The diffusers scheduler that ``sample`` steps with (saved beside exported models)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: tuple[int, ...],
        cond: Any,
        steps: int,
        generator: torch.Generator,
        device: torch.device | str,
        progress: bool = False,
    ) -> Tensor:
        """Draw ``shape`` samples in [-1, 1] with ``steps`` model calls.

        The ``sampler()`` chain from noise: each model call sees the batch at one float
        timestep ``[B]``; ``step_options`` go to every ``scheduler.step``; the sample is
        ``final(last step's output)``, clamped.
        """
        scheduler = self.sampler()
        scheduler.set_timesteps(self._steps(steps), device=device)
        x = self._start(shape, generator, device)
        for t in _progress(scheduler.timesteps, progress, self.sampler_name):
            tt = torch.full((shape[0],), float(t), device=x.device)
            pred = model_fn(x, tt, cond)
            out = scheduler.step(pred.to(x.dtype), t, x, **self.step_options)
            x = out.prev_sample
        return self.final(out).clamp(-1, 1)

    def final(self, out: Any) -> Tensor:
        """The sample in the output of the chain's last ``scheduler.step``."""
        return out.prev_sample

    @staticmethod
    def _check(x0: Tensor, noise: Tensor, u: Tensor) -> None:
        if noise.shape != x0.shape:
            raise ShapeError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        if u.shape != (x0.shape[0],):
            raise ShapeError(f"u must have shape [{x0.shape[0]}], got {tuple(u.shape)}")

    @staticmethod
    def _start(
        shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str
    ) -> Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(tuple(shape), generator=generator, device=torch.device(device))

    @staticmethod
    def _steps(steps: int) -> int:
        if not isinstance(steps, int) or steps < 1:
            raise OptionError(f"sampling steps must be an integer >= 1, got {steps!r}")
        return steps

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"

    @property
    def options(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


class DDPMProcess(Process):
    """DDPM noising (epsilon target) with DDIM (eta = 0) sampling."""

    name = "ddpm"
    prediction = "epsilon"
    sampler_name = "DDIM"
    step_options: ClassVar[dict[str, Any]] = {"eta": 0.0}

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        clip_sample: bool = True,
        timestep_spacing: str = "trailing",
    ):
        from diffusers import DDPMScheduler

        if timestep_spacing not in ("leading", "trailing", "linspace"):
            raise OptionError(
                f"ddpm: timestep_spacing must be leading, trailing or linspace, got "
                f"{timestep_spacing!r}"
            )
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.beta_schedule, self.clip_sample = beta_schedule, bool(clip_sample)
        self.timestep_spacing = timestep_spacing
        try:
            self.scheduler = DDPMScheduler(
                num_train_timesteps=self.num_train_timesteps,
                beta_start=self.beta_start,
                beta_end=self.beta_end,
                beta_schedule=beta_schedule,
                clip_sample=clip_sample,
                prediction_type="epsilon",
            )
        except NotImplementedError as exc:
            raise OptionError(f"ddpm: {exc}") from exc

    def timestep_of(self, u: Tensor) -> Tensor:
        """Integer steps ``floor(u * T)`` (clamped to T - 1) as a long tensor."""
        return (u * self.num_train_timesteps).floor().long().clamp_(0, self.num_train_timesteps - 1)

    def training_example(self, x0, noise, u):
        self._check(x0, noise, u)
        steps = self.timestep_of(u.to(x0.device))
        x_t = self.scheduler.add_noise(x0, noise, steps)
        return x_t, steps.to(x0.dtype), noise

    def sampler(self):
        """``DDIMScheduler`` on the training betas (eta = 0 is passed at each step)."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(
            self.scheduler.config,
            timestep_spacing=self.timestep_spacing,
            clip_sample=self.clip_sample,
        )

    def final(self, out: Any) -> Tensor:
        # The last step's x0 estimate: with trailing spacing the chain ends at t = 0, whose
        # sample still carries sqrt(1 - abar_0) = 1% noise.
        return out.pred_original_sample


class FlowProcess(Process):
    """Rectified flow (velocity target) with Euler sampling."""

    name = "flow"
    prediction = "velocity"
    sampler_name = "Euler"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        timestep_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ):
        if timestep_sampling not in ("uniform", "logit_normal"):
            raise OptionError(
                f"flow: timestep_sampling must be 'uniform' or 'logit_normal', got "
                f"{timestep_sampling!r}"
            )
        if not shift > 0:
            raise OptionError(f"flow: shift must be > 0, got {shift!r}")
        if not logit_std > 0:
            raise OptionError(f"flow: logit_std must be > 0, got {logit_std!r}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.timestep_sampling = timestep_sampling
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)

    def sigma_of(self, u: Tensor) -> Tensor:
        """The noise level for uniform ``u`` (sampling density, then SD3's shift)."""
        u = u.double()
        if self.timestep_sampling == "logit_normal":
            sigma = torch.sigmoid(self.logit_mean + self.logit_std * torch.special.ndtri(u))
        else:
            sigma = u
        sigma = self.shift * sigma / (1 + (self.shift - 1) * sigma)
        return sigma

    def training_example(self, x0, noise, u):
        self._check(x0, noise, u)
        sigma = self.sigma_of(u.to(x0.device)).to(x0.dtype)
        s = sigma.view(-1, *([1] * (x0.dim() - 1)))
        x_t = (1 - s) * x0 + s * noise
        return x_t, sigma * self.num_train_timesteps, noise - x0

    def sampler(self):
        """``FlowMatchEulerDiscreteScheduler`` with the training shift."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=self.num_train_timesteps, shift=self.shift
        )


PROCESSES: dict[str, type[Process]] = {"ddpm": DDPMProcess, "flow": FlowProcess}


def get_process(name: str, **options: Any) -> Process:
    """A process by name (``ddpm`` or ``flow``) with validated options."""
    from harness.registry import check_options, did_you_mean

    if name not in PROCESSES:
        raise OptionError(
            f"unknown process {name!r}{did_you_mean(name, PROCESSES)}; "
            f"valid: {', '.join(PROCESSES)}"
        )
    cls = PROCESSES[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    check_options(f"process {name!r}", options, valid)
    return cls(**options)
