"""Evaluation of a trained model: sampling with the process's sampler, then metrics.

Samples are drawn with the EMA weights, in batches, from a generator seeded by the
cell's seed, with class labels balanced over the classes (i mod K), so two cells at the
same seed draw from the same noise.  Metrics come from torch-fidelity
(``harness.metrics``); class-conditional data sets with a classifier also report the
classifier's accuracy on the samples (does the model draw the class it was asked for?).
FID's evaluation noise is logged as ``fid_boot_std`` (FID_BOOTSTRAP resamples of the
generated samples against the fixed reference; see ``harness.metrics``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.schema import Metric

FID_BOOTSTRAP = 20  # resamples for fid_boot_std: a 16% relative error on the std


@torch.no_grad()
def generate(
    model: nn.Module,
    process: Any,
    *,
    num: int,
    shape: tuple[int, ...],
    num_classes: int,
    steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: bool = False,
) -> tuple[Tensor, Tensor | None]:
    model.eval()
    labels = torch.arange(num) % num_classes if num_classes else None
    generator = torch.Generator().manual_seed(10_007 * (seed + 1))
    chunks = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        cond = None if labels is None else labels[start : start + n].to(device)
        chunks.append(
            process.sample(
                model, (n, *shape), cond, steps, generator, device, progress=progress
            ).cpu()
        )
    return torch.cat(chunks), labels


def save_grid(images: Tensor, path: Path, nrow: int = 10) -> Path:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images[: nrow * nrow] + 1) / 2, str(path), nrow=nrow, padding=1)
    return path


def evaluate(
    model: nn.Module,
    process: Any,
    reference: Tensor,
    *,
    eval_cfg: Any,
    num_classes: int,
    seed: int,
    device: torch.device,
    feature_extractor: str,
    classifier: nn.Module | None = None,
    progress: bool = False,
    cache_dir: str | None = None,
) -> tuple[dict[str, float], Tensor]:
    from harness.metrics import class_accuracy, compute_metrics

    start = time.perf_counter()
    images, labels = generate(
        model,
        process,
        num=eval_cfg.num_samples,
        shape=tuple(reference.shape[1:]),
        num_classes=num_classes,
        steps=eval_cfg.sample_steps,
        batch_size=eval_cfg.batch_size,
        seed=seed,
        device=device,
        progress=progress,
    )
    t_sample = time.perf_counter() - start
    start = time.perf_counter()
    if not torch.isfinite(images).all():
        raise FloatingPointError("samples contain NaN/inf")
    metrics = compute_metrics(
        images,
        reference,
        feature_extractor=feature_extractor,
        metrics=tuple(eval_cfg.metrics),
        weights_path=eval_cfg.inception_weights,
        device=str(device),
        cache_dir=cache_dir,  # reference features are computed once per data set
        fid_bootstrap=FID_BOOTSTRAP,
    )
    if classifier is not None and labels is not None:
        metrics[Metric.CLASS_ACC] = class_accuracy(classifier, images, labels)
    metrics[Metric.TIME_SAMPLE_S] = t_sample
    metrics[Metric.TIME_METRICS_S] = time.perf_counter() - start
    return metrics, images
