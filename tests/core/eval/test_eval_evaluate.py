"""evaluate_policy and EvalResult: returns, costs and DSRL's normalised scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saferule_core.errors import ModelError
from saferule_core.eval import EvalResult, EvaluationError, evaluate_policy
from saferule_core.tasks import get_task


def _constant(action: list[float]):
    return lambda obs: np.tile(np.asarray([action], dtype=np.float32), (obs.shape[0], 1))


def test_normalised_scores_follow_dsrl_formulas_on_known_returns() -> None:
    spec = get_task("BallRun")
    result = EvalResult(task="BallRun", seed=0, episode_returns=np.array([spec.reward_min, spec.reward_max]),
                        episode_costs=np.array([5.0, 15.0]), episode_lengths=np.array([100, 100]),
                        thresholds=(10.0, 20.0, 40.0), reward_min=spec.reward_min, reward_max=spec.reward_max)
    assert result.mean_return == pytest.approx((spec.reward_min + spec.reward_max) / 2)
    assert result.normalized_reward == pytest.approx(0.5)
    assert result.normalized_reward_std == pytest.approx(0.5)
    assert result.mean_cost == 10.0 and result.std_cost == 5.0
    assert result.normalized_costs == {10.0: pytest.approx(1.0), 20.0: pytest.approx(0.5), 40.0: pytest.approx(0.25)}
    over = EvalResult(**{**result.__dict__, "episode_costs": np.array([11.0, 11.0])})
    assert result.is_safe(10.0) and not over.is_safe(10.0)
    zero = EvalResult(**{**result.__dict__, "thresholds": (0.0,), "episode_costs": np.array([1.0, 1.0])})
    assert zero.normalized_costs[0.0] == pytest.approx(2.0)  # (C + 1) / (0 + 1)


def test_scripted_policy_evaluation_reports_consistent_numbers() -> None:
    spec = get_task("BallRun")
    result = evaluate_policy(_constant([1.0, 0.0]), "BallRun", episodes=3, seed=0)
    assert result.episodes == 3 and list(result.episode_lengths) == [spec.episode_len] * 3
    assert result.mean_return == pytest.approx(float(np.mean(result.episode_returns)))
    assert result.normalized_reward == pytest.approx(spec.normalized_reward(result.mean_return))
    assert result.mean_cost > 40  # full throttle breaks BallRun's speed limit
    assert all(not result.is_safe(k) for k in result.thresholds)
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["normalized_cost"]["10"] == pytest.approx(result.mean_cost / 10)
    assert as_dict["episode_returns"] == pytest.approx(list(result.episode_returns))
    table = result.format_table()
    assert "normalised reward" in table and "UNSAFE" in table and "BallRun" in table
    cautious = evaluate_policy(_constant([0.1, 0.0]), "BallRun", episodes=2, seed=0)
    assert cautious.mean_cost < result.mean_cost and cautious.is_safe(10.0)


def test_actions_are_clipped_and_evaluation_is_reproducible() -> None:
    wild = evaluate_policy(_constant([50.0, -50.0]), "BallCircle", episodes=2, seed=4, num_envs=2)
    unit = evaluate_policy(_constant([1.0, -1.0]), "BallCircle", episodes=2, seed=4, num_envs=1)
    assert np.array_equal(wild.episode_returns, unit.episode_returns)
    assert np.array_equal(wild.episode_costs, unit.episode_costs)


def test_bad_policies_and_settings_are_refused() -> None:
    with pytest.raises(ModelError, match="shape"):
        evaluate_policy(lambda obs: np.zeros((obs.shape[0], 3)), "BallRun", episodes=1)
    with pytest.raises(ModelError, match="NaN"):
        evaluate_policy(lambda obs: np.full((obs.shape[0], 2), np.nan), "BallRun", episodes=1)
    with pytest.raises(EvaluationError):
        evaluate_policy(_constant([0.0, 0.0]), "BallRun", episodes=0)
    with pytest.raises(EvaluationError):
        evaluate_policy(_constant([0.0, 0.0]), "BallRun", episodes=1, thresholds=())


def test_run_tasks_perturb_the_start_so_a_deterministic_policy_sees_different_episodes() -> None:
    policy = _constant([0.6, 0.0])
    plain = evaluate_policy(policy, "BallRun", episodes=6, seed=0, random_start_steps=0)
    assert np.ptp(plain.episode_returns) < 1e-3 * abs(plain.mean_return)        # one episode, replayed
    varied = evaluate_policy(policy, "BallRun", episodes=6, seed=0)                 # the task's default
    assert varied.random_start_steps == get_task("BallRun").eval_random_start_steps == 10
    assert len(set(np.round(varied.episode_returns, 3))) == 6
    again = evaluate_policy(policy, "BallRun", episodes=6, seed=0)                  # same perturbation per seed
    np.testing.assert_array_equal(again.episode_returns, varied.episode_returns)
    assert json.loads(json.dumps(varied.to_dict()))["random_start_steps"] == 10
    with pytest.raises(EvaluationError, match="random_start_steps"):
        evaluate_policy(policy, "BallRun", episodes=1, random_start_steps=-1)
