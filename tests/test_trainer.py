"""The training loop: fairness across objectives, cached = live teacher, exact resume,
divergence detection."""

from __future__ import annotations

import pytest
import torch

from harness import build_combination, get_backbone
from harness.errors import DivergedError
from harness.process import get_process
from harness.teacher_cache import CachedTeacher, TeacherPredictionCache
from harness.trainer import (
    BatchMaker,
    LiveTeacher,
    LoopSettings,
    StepRandomness,
    TeacherSource,
    train,
)


def tiny(seed: int, preset_index: int = 0):
    backbone = get_backbone("unet")
    preset = list(backbone.presets)[preset_index]
    torch.manual_seed(seed)
    return backbone.build(preset, image_size=16, channels=1, num_classes=10)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(96, 1, 16, 16, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (96,), generator=g)
    return images, labels


def maker(data, seed=0, batch=8):
    return BatchMaker(data[0], data[1], get_process("ddpm"), batch, seed, torch.device("cpu"))


SETTINGS = dict(steps=6, batch_size=8, lr=1e-3, log_every=1, checkpoint_every=2)


def train_tiny(data, objective, teacher, settings=None, **options):
    """``train`` a fresh ``tiny(0)`` student on ``data`` with ``objective`` (its tables)."""
    return train(
        tiny(0),
        batches=maker(data),
        settings=settings or LoopSettings(**SETTINGS),
        objective=build_combination(objective),
        teacher=teacher,
        **options,
    )


def test_step_randomness_is_a_function_of_seed_and_step():
    a, b = StepRandomness(10, 4, seed=1), StepRandomness(10, 4, seed=1)
    for step in (0, 3, 2, 7):
        assert torch.equal(a.indices(step), b.indices(step))
        assert all(
            torch.equal(x, y) for x, y in zip(a.noise(step, (1, 2, 2)), b.noise(step, (1, 2, 2)))
        )
    assert not torch.equal(a.noise(0, (3,))[0], StepRandomness(10, 4, seed=2).noise(0, (3,))[0])
    # Each epoch visits every item once (steps may straddle epochs).
    seen = torch.cat([StepRandomness(10, 5, 3).indices(s) for s in range(2)])
    assert sorted(seen.tolist()) == list(range(10))


class Spy(TeacherSource):
    """Records what the teacher is shown, and answers with a fixed function of it."""

    def __init__(self):
        self.seen = []
        self.seconds = 0.0

    def __call__(self, batch):
        from harness import Outputs

        self.seen.append((batch.step, batch.x_t.clone(), batch.t.clone(), batch.cond.clone()))
        return Outputs(0.5 * batch.x_t)


def test_every_objective_sees_the_same_data_noise_and_timesteps(data):
    records = {}
    for name in ("outkd", "place", "lift"):
        spy = Spy()
        train_tiny(data, [{"name": name}], spy)
        records[name] = spy.seen
    base = records["outkd"]
    for name in ("place", "lift"):
        assert len(records[name]) == len(base)
        for (s1, x1, t1, c1), (s2, x2, t2, c2) in zip(base, records[name]):
            assert s1 == s2 and torch.equal(x1, x2) and torch.equal(t1, t2) and torch.equal(c1, c2)


def test_cached_teacher_trains_exactly_like_the_live_teacher(data, tmp_path):
    teacher = tiny(1, preset_index=1)
    objective = [{"name": "outkd"}]
    live = train_tiny(data, objective, LiveTeacher(teacher))
    cache = TeacherPredictionCache(tmp_path / "preds", steps=SETTINGS["steps"], chunk=4)
    cache.build(LiveTeacher(teacher), maker(data))
    assert cache.complete() and cache.num_chunks == 2
    cached = train_tiny(data, objective, CachedTeacher(cache))
    for p, q in zip(live.model.parameters(), cached.model.parameters()):
        assert torch.equal(p, q)


def test_a_killed_run_resumes_to_the_same_result(data, tmp_path):
    teacher = LiveTeacher(tiny(1, preset_index=1))
    objective = [{"name": "place", "group_size": 16}]
    full = train_tiny(data, objective, teacher)
    ckpt = tmp_path / "cell.safetensors"

    def stop_at_3(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_tiny(data, objective, teacher, checkpoint=ckpt, log=stop_at_3)
    assert ckpt.exists()  # written after step 2
    resumed = train_tiny(data, objective, teacher, checkpoint=ckpt)
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(full.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(p, q)


def test_nan_loss_is_reported_as_divergence_with_its_step(data):
    class NaNTeacher(TeacherSource):
        seconds = 0.0

        def __call__(self, batch):
            from harness import Outputs

            pred = torch.zeros_like(batch.x_t)
            if batch.step >= 2:
                pred[0, 0, 0, 0] = float("nan")
            return Outputs(pred)

    with pytest.raises(DivergedError) as err:
        train_tiny(data, [{"name": "outkd"}], NaNTeacher())
    assert err.value.step == 2
    assert "nan" in err.value.reason


def test_exploding_loss_is_reported_as_divergence(data):
    settings = LoopSettings(steps=40, batch_size=8, lr=1e-3, log_every=1, diverge_factor=10)

    class Exploding(TeacherSource):
        seconds = 0.0

        def __call__(self, batch):
            from harness import Outputs

            scale = 1.0 if batch.step < 25 else 1e4
            return Outputs(scale * torch.ones_like(batch.x_t))

    with pytest.raises(DivergedError, match=r"x early loss") as err:
        train_tiny(data, [{"name": "outkd"}], Exploding(), settings=settings)
    assert err.value.step == 25
