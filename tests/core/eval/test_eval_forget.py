"""forget_quality: mean L2 distance between two policies' actions."""

from __future__ import annotations

import numpy as np
import pytest

from saferule_core.errors import ModelError
from saferule_core.eval import EvaluationError, forget_quality
from saferule_core.eval import forget as forget_module


def _linear(weights: np.ndarray):
    return lambda obs: obs @ weights


def test_identical_policies_have_zero_forget_quality() -> None:
    states = np.random.default_rng(0).normal(size=(100, 7)).astype(np.float32)
    policy = _linear(np.random.default_rng(1).normal(size=(7, 2)))
    assert forget_quality(policy, policy, states) == 0.0


def test_forget_quality_is_the_mean_action_distance_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forget_module, "CHUNK_ROWS", 3)
    states = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    a = _linear(np.zeros((4, 2)))
    b = lambda obs: np.tile([3.0, 4.0], (obs.shape[0], 1))  # noqa: E731
    assert forget_quality(a, b, states) == pytest.approx(5.0)
    half = lambda obs: np.where(obs[:, :1] > 0, 1.0, 0.0) * np.array([[0.0, 2.0]])  # noqa: E731
    expected = 2.0 * float(np.mean(states[:, 0] > 0))
    assert forget_quality(a, half, states) == pytest.approx(expected)


def test_bad_states_and_policies_are_refused() -> None:
    policy = _linear(np.zeros((4, 2)))
    with pytest.raises(EvaluationError):
        forget_quality(policy, policy, np.zeros((0, 4)))
    with pytest.raises(EvaluationError):
        forget_quality(policy, policy, np.zeros(4))
    with pytest.raises(ModelError, match="shape"):
        forget_quality(policy, lambda obs: np.zeros((obs.shape[0], 3)), np.ones((5, 4)))
    with pytest.raises(ModelError, match="NaN"):
        forget_quality(policy, lambda obs: np.full((obs.shape[0], 2), np.inf), np.ones((5, 4)))
