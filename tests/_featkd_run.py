"""A few FeatKD training steps on tiny U-Nets; prints what they produced as JSON.

Run as a script by ``test_reproducible.py`` (each run a fresh process) and imported by it.
The student is the teacher (``xs``) at half its width, so every tap has an adapter.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import build_combination, get_backbone  # noqa: E402
from harness.process import get_process  # noqa: E402
from harness.trainer import BatchMaker, LiveTeacher, LoopSettings, train  # noqa: E402

HALF_WIDTH = {"block_out_channels": [8, 16, 16], "norm_num_groups": 4}


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(seed: int = 0, steps: int = 2) -> dict:
    """Step-0 terms (``float.hex``), the adapters as ``setup`` built them, and the trained
    student, after ``steps`` steps of ``outkd+featkd`` at training seed ``seed``."""
    backbone = get_backbone("unet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = backbone.build("xs", image_size=8, channels=1, num_classes=10)
        student = backbone.build("xs", image_size=8, channels=1, num_classes=10, config=HALF_WIDTH)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (32,), generator=g)
    batches = BatchMaker(images, labels, get_process("ddpm"), 8, seed, torch.device("cpu"))
    objective = build_combination([{"name": "outkd"}, {"name": "featkd", "weight": 0.5}])
    pairs = backbone.pair_taps(student, teacher)
    built: dict[str, str] = {}
    setup = objective.setup

    def record_setup(s, t):
        setup(s, t)
        built["adapters"] = digest(objective.state_dict())

    objective.setup = record_setup
    logged: dict[int, dict[str, str]] = {}
    train(
        student,
        batches=batches,
        settings=LoopSettings(steps=steps, batch_size=8, log_every=1, precision="fp32"),
        objective=objective,
        teacher=LiveTeacher(teacher, pairs),
        pairs=pairs,
        log=lambda step, terms: logged.setdefault(step, {k: v.hex() for k, v in terms.items()}),
    )
    return {
        "step0": logged[0],
        "adapters": built["adapters"],
        "student": digest(student.state_dict()),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 0), sort_keys=True))
