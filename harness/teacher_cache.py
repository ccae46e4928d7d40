"""Teacher predictions computed once per (teacher, seed) and reused by every objective.

Because a step's batch is a function of (seed, step) alone (``trainer.StepRandomness``),
the teacher's prediction at a step is the same for every student and objective of a grid.
``TeacherPredictionCache`` stores them in chunks of verified safetensors files under the
cache folder; ``CachedTeacher`` serves them.  Features (FeatKD) are not cached: they are
large, and cells that need them use the live teacher.  The cache is built under a file
lock so that parallel workers build it once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from filelock import FileLock

from harness.objective import Outputs
from harness.storage import atomic_write_bytes, load_tensors, save_tensors
from harness.trainer import Batch, BatchMaker, LiveTeacher, TeacherSource

MiB = 1024 * 1024


def cache_size_mb(steps: int, batch_size: int, sample_shape: tuple[int, ...]) -> float:
    n = steps * batch_size
    for d in sample_shape:
        n *= d
    return n * 4 / MiB


class TeacherPredictionCache:
    def __init__(self, folder: Path, steps: int, chunk: int = 50):
        self.folder, self.steps, self.chunk = Path(folder), steps, chunk

    def _chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk{index:05d}.safetensors"

    @property
    def num_chunks(self) -> int:
        return (self.steps + self.chunk - 1) // self.chunk

    def complete(self) -> bool:
        return (self.folder / "COMPLETE").exists()

    def build(
        self, teacher: LiveTeacher, batches: BatchMaker, progress: str | None = None
    ) -> float:
        """Run the teacher over every step once; returns the seconds it took."""
        from tqdm.auto import tqdm

        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.folder) + ".lock"):
            if self.complete():
                return 0.0
            start = time.perf_counter()
            bar = tqdm(
                total=self.num_chunks,
                desc=progress,
                leave=False,
                disable=progress is None or not sys.stderr.isatty(),  # quiet in CI logs
            )
            for index in range(self.num_chunks):
                path = self._chunk_path(index)
                if path.exists():
                    bar.update(1)
                    continue
                steps = range(index * self.chunk, min(self.steps, (index + 1) * self.chunk))
                preds = torch.stack([teacher(batches(s)).pred.cpu() for s in steps])
                save_tensors(path, {"pred": preds})
                bar.update(1)
            bar.close()
            atomic_write_bytes(self.folder / "COMPLETE", str(self.steps).encode())
            return time.perf_counter() - start


class CachedTeacher(TeacherSource):
    def __init__(self, cache: TeacherPredictionCache, device: torch.device | str = "cpu"):
        self.cache, self.device = cache, torch.device(device)
        self._index, self._preds = -1, None
        self.seconds = 0.0

    def __call__(self, batch: Batch) -> Outputs:
        start = time.perf_counter()
        index = batch.step // self.cache.chunk
        if index != self._index:
            path = self.cache._chunk_path(index)
            self._preds = load_tensors(path, device=self.device)["pred"]
            self._index = index
        out = Outputs(self._preds[batch.step - index * self.cache.chunk])
        self.seconds += time.perf_counter() - start
        return out
