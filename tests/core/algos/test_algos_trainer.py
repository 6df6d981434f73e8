from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saferule_core.algos.checkpoint import CONFIG_FILE, MODEL_FILE, read_checkpoint
from saferule_core.algos.registry import ConfigError, make_config
from saferule_core.algos.trainer import METRICS_FILE, TrainConfig, fit, train, tune_cpu_allocator
from saferule_core.errors import ModelError


def config(steps: int, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=32, num_threads=1, progress=False, **{"log_every": 5, **kw})


def params(learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.parameters()]


def test_fit_writes_model_config_and_metrics_and_calls_back(random_dataset, tiny, tmp_path: Path) -> None:
    seen: list[int] = []
    learner, result = fit("bcq_lag", random_dataset(), tmp_path / "run", config(12, checkpoint_every=0),
                          tiny["bcq_lag"], callback=lambda step, lrn: seen.append(step))
    assert seen == list(range(1, 13)) and learner.num_updates == 12 and result.steps == 12
    out = tmp_path / "run"
    assert (out / MODEL_FILE).is_file() and (out / CONFIG_FILE).is_file()
    lines = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [line["step"] for line in lines] == [5, 10, 12]
    assert {"vae_loss", "reward_critic_loss", "cost_critic_loss", "lagrange_multiplier"} <= set(lines[0])
    assert result.metrics == {k: v for k, v in lines[-1].items() if k not in ("step", "seconds")}
    assert read_checkpoint(out)["trainer"]["step"] == 12
    assert json.loads((out / CONFIG_FILE).read_text())["train"]["steps"] == 12


def test_periodic_checkpoints_are_written_during_training(random_dataset, tiny, tmp_path: Path) -> None:
    out = tmp_path / "run"
    saved_steps: dict[int, int] = {}

    def look(step: int, _learner) -> None:
        if (out / MODEL_FILE).exists():
            saved_steps[step] = read_checkpoint(out)["trainer"]["step"]

    fit("bc_all", random_dataset(), out, config(9, checkpoint_every=4), tiny["bc_all"], callback=look)
    assert saved_steps[4] == 4 and saved_steps[7] == 4 and saved_steps[8] == 8 and 3 not in saved_steps


def test_resumed_run_matches_an_uninterrupted_one_exactly(random_dataset, tiny, tmp_path: Path) -> None:
    ds = random_dataset()
    whole, _ = fit("bcq_lag", ds, tmp_path / "whole", config(10, checkpoint_every=6), tiny["bcq_lag"])
    fit("bcq_lag", ds, tmp_path / "split", config(6), tiny["bcq_lag"])           # "interrupted" at step 6
    resumed, result = fit("bcq_lag", ds, tmp_path / "split", config(10), tiny["bcq_lag"], resume=True)
    assert result.steps == 10 and resumed.num_updates == 10
    for a, b in zip(params(whole), params(resumed)):
        assert torch.equal(a, b)
    assert torch.equal(whole.lagrangian.integral, resumed.lagrangian.integral)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / METRICS_FILE).read_text().splitlines()]
    assert steps == [5, 6, 10]


def test_existing_model_is_not_overwritten_and_resume_needs_matching_data(random_dataset, tiny, tmp_path: Path) -> None:
    fit("bc_all", random_dataset(), tmp_path / "run", config(3), tiny["bc_all"])
    with pytest.raises(ConfigError, match="already holds"):
        fit("bc_all", random_dataset(), tmp_path / "run", config(5), tiny["bc_all"])
    with pytest.raises(ModelError, match="different dataset"):
        fit("bc_all", random_dataset(seed=9), tmp_path / "run", config(5), tiny["bc_all"], resume=True)
    with pytest.raises(ModelError, match="cannot resume"):
        fit("bc_safe", random_dataset(), tmp_path / "run", config(5), tiny["bc_safe"], resume=True)
    with pytest.raises(ModelError, match=r"other settings \(hidden, lr\)"):
        fit("bc_all", random_dataset(), tmp_path / "run", config(5), {"hidden": [8], "lr": 0.1}, resume=True)
    _, result = fit("bc_all", random_dataset(), tmp_path / "run", config(5), {**tiny["bc_all"], "precision": "bf16"},
                    resume=True)
    assert result.steps == 5


def test_same_seed_same_model_other_seed_other_model(random_dataset, tiny, tmp_path: Path) -> None:
    ds = random_dataset()
    a, _ = fit("cpq", ds, tmp_path / "a", config(4, seed=1), tiny["cpq"])
    b, _ = fit("cpq", ds, tmp_path / "b", config(4, seed=1), tiny["cpq"])
    c, _ = fit("cpq", ds, tmp_path / "c", config(4, seed=2), tiny["cpq"])
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(b)))
    assert not all(torch.equal(x, y) for x, y in zip(params(a), params(c)))


def test_train_refuses_a_learner_built_for_other_spaces(random_dataset, tiny, tmp_path: Path) -> None:
    from saferule_core.algos.bc import BC

    learner = BC.from_dataset(random_dataset(obs_dim=4), make_config("bc_all", tiny["bc_all"]))
    with pytest.raises(ModelError, match="obs_dim=4"):
        train(learner, random_dataset(obs_dim=8), tmp_path / "x", config(2))


def test_bad_settings_are_refused(random_dataset, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps"):
        fit("bc_all", random_dataset(), tmp_path / "x", config(0))
    with pytest.raises(ConfigError, match="unknown BCQLagConfig settings: hiden"):
        make_config("bcq_lag", {"hiden": [3]})
    with pytest.raises(ConfigError, match="precision"):
        make_config("cpq", {"precision": "fp16"})
    with pytest.raises(ConfigError, match="action_selection must be one of osrl, constrained"):
        make_config("bcq_lag", {"action_selection": "greedy"})
    with pytest.raises(ConfigError, match="selection_budget must be in"):
        make_config("bcq_lag", {"selection_budget": 0.0})
    with pytest.raises(ConfigError, match="num_sampled_actions"):
        make_config("bcq_lag", {"num_sampled_actions": 0})
    with pytest.raises(ConfigError, match="list of integers"):
        make_config("bc_all", {"hidden": "big"})
    with pytest.raises(ConfigError, match="requires safe_only=True"):
        make_config("bc_safe", {"safe_only": False})
    with pytest.raises(ConfigError, match="unknown algorithm"):
        make_config("sac")


def test_allocator_tuning_reports_success_on_linux() -> None:
    assert tune_cpu_allocator() is True
