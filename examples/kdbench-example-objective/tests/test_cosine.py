import math

import pytest
import torch

from kdbench import Outputs, get_objective


def test_cosine_is_zero_for_parallel_predictions():
    s = torch.randn(4, 3, 8, 8)
    obj = get_objective("cosine")
    assert obj(Outputs(s), Outputs(2.5 * s))["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_cosine_golden_value_for_orthogonal_predictions():
    s = torch.zeros(1, 1, 1, 2)
    t = torch.zeros(1, 1, 1, 2)
    s[..., 0], t[..., 1] = 1.0, 1.0
    assert get_objective("cosine")(Outputs(s), Outputs(t))["loss"].item() == pytest.approx(1.0)


def test_cosine_opposite_direction_costs_two():
    s = torch.randn(2, 3, 4, 4)
    loss = get_objective("cosine")(Outputs(s), Outputs(-s))["loss"].item()
    assert math.isclose(loss, 2.0, rel_tol=1e-6)
