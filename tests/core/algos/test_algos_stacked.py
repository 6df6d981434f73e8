"""K models trained as one stack are the same learners as K single runs (up to summation order)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saferule_core.algos.batch import BatchSampler
from saferule_core.algos.checkpoint import load_learner
from saferule_core.algos.networks import native_bf16_available
from saferule_core.algos.registry import ConfigError
from saferule_core.algos.stacked import StackTrainConfig, build_stack, fit_seeds, seed_dirs, train_stack
from saferule_core.algos.trainer import TrainConfig, fit

SEEDS = (3, 0, 7)


def _quiet(steps: int, **kwargs: int) -> dict[str, object]:
    return {"steps": steps, "batch_size": 32, "num_threads": 1, "log_every": 1, "checkpoint_every": 0,
            "progress": False, **kwargs}


def _metric_lines(directory: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


# CPQ's OOD penalty masks the sampled actions whose latent KL is at or above a batch quantile: a
# hard threshold, so a summation-order difference can move one sample across it, and from then on
# the penalised cost critics (only they) drift apart slowly. Everything else must match as tightly.
CPQ_COST_SIDE_KEYS = ("cost_critic_loss", "q_cost", "ood_q_cost")
CPQ_COST_SIDE_RTOL = 2e-2
CPQ_COST_CRITIC_ATOL = 5e-2


def _assert_same_networks(mine: dict[str, dict[str, torch.Tensor]], theirs: dict[str, dict[str, torch.Tensor]],
                          algo: str, seed: int) -> None:
    for name, their_tensors in theirs.items():
        for tensor_name, their_tensor in their_tensors.items():
            my_tensor, message = mine[name][tensor_name], f"seed {seed}: {name}.{tensor_name}"
            if algo == "cpq" and name in ("critics", "critics_target"):   # [members, ...]: 2 reward, then 2 cost
                torch.testing.assert_close(my_tensor[:2], their_tensor[:2], rtol=1e-3, atol=1e-4, msg=message)
                torch.testing.assert_close(my_tensor[2:], their_tensor[2:], rtol=0, atol=CPQ_COST_CRITIC_ATOL,
                                           msg=message)
            else:
                torch.testing.assert_close(my_tensor, their_tensor, rtol=1e-3, atol=1e-4, msg=message)


@pytest.mark.parametrize("algo", ["bcq_lag", "bc_safe", "cpq"])
def test_model_k_of_a_stack_follows_the_single_run_with_seed_k(random_dataset, tiny, tmp_path, algo) -> None:  # type: ignore[no-untyped-def]
    dataset = random_dataset(episodes=12)
    steps = 200
    # bcq_lag: a cost limit below the critics' values, so that each model's PID multiplier is live;
    # cpq: one at which the OOD penalty's multiplier alpha moves
    live = {"bcq_lag": {"cost_limit": 0.0, "cost_scale": 10.0}, "bc_safe": {"cost_limit": 2.0},
            "cpq": {"cost_limit": 2.0}}[algo]
    overrides = {**tiny[algo], **live}
    fit_seeds(algo, dataset, SEEDS, seed_dirs(tmp_path / "stack", SEEDS), StackTrainConfig(**_quiet(steps)),
                         overrides)
    for seed in SEEDS:
        single, _ = fit(algo, dataset, tmp_path / f"single_{seed}", TrainConfig(seed=seed, **_quiet(steps)), overrides)
        stacked_lines = _metric_lines(tmp_path / "stack" / f"seed_{seed}")
        single_lines = _metric_lines(tmp_path / f"single_{seed}")
        assert len(stacked_lines) == len(single_lines) == steps
        if algo == "bcq_lag":
            assert max(line["lagrange_multiplier"] for line in single_lines) > 0.01
        if algo == "cpq":
            assert len({round(line["alpha"], 6) for line in single_lines}) > 10
        for mine, theirs in zip(stacked_lines, single_lines):         # update by update
            for key in theirs:
                if key not in ("step", "seconds"):
                    rel = CPQ_COST_SIDE_RTOL if algo == "cpq" and key in CPQ_COST_SIDE_KEYS else 2e-3
                    assert mine[key] == pytest.approx(theirs[key], rel=rel, abs=2e-4), (seed, mine["step"], key)
        reloaded = load_learner(tmp_path / "stack" / f"seed_{seed}")
        assert reloaded.num_updates == single.num_updates == steps
        _assert_same_networks(reloaded.state_dict()["networks"], single.state_dict()["networks"], algo, seed)


@pytest.mark.skipif(not native_bf16_available(), reason="this CPU has no native bfloat16: the fused bfloat16 "
                                                         "targets do not run here")
@pytest.mark.parametrize("layer_norm", [False, True])
def test_a_bf16_stack_with_fused_targets_follows_the_single_runs(random_dataset, tiny, tmp_path, layer_norm) -> None:  # type: ignore[no-untyped-def]
    # the stack computes its targets model by model with the fused kernels and its critic phases
    # batched over the model axis; a single run does the same for one model
    dataset = random_dataset(episodes=12)
    steps, seeds = 30, (3, 0)
    overrides = {**tiny["bcq_lag"], "cost_limit": 0.0, "cost_scale": 10.0, "precision": "bf16",
                 "critic_layer_norm": layer_norm}
    stack = build_stack("bcq_lag", [dataset] * len(seeds), seeds, overrides, 32)
    assert stack.template._fused_targets
    train_stack(stack, [dataset] * len(seeds), seeds, seed_dirs(tmp_path / "stack", seeds),
                StackTrainConfig(**_quiet(steps)))
    for seed in seeds:
        fit("bcq_lag", dataset, tmp_path / f"single_{seed}", TrainConfig(seed=seed, **_quiet(steps)), overrides)
        for mine, theirs in zip(_metric_lines(tmp_path / "stack" / f"seed_{seed}"),
                                _metric_lines(tmp_path / f"single_{seed}"), strict=True):
            for key in ("vae_loss", "reward_critic_loss", "cost_critic_loss", "q_reward", "q_cost"):
                # bfloat16 rounding, not a different computation: a few percent at most
                assert mine[key] == pytest.approx(theirs[key], rel=0.05, abs=0.02), (seed, mine["step"], key)


def test_a_stack_of_one_is_exactly_the_single_run(random_dataset, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dataset = random_dataset(episodes=8)
    overrides = {**tiny["bcq_lag"], "cost_limit": 0.0, "cost_scale": 10.0}
    fit_seeds("bcq_lag", dataset, (5,), seed_dirs(tmp_path / "stack", (5,)), StackTrainConfig(**_quiet(40)), overrides)
    single, _ = fit("bcq_lag", dataset, tmp_path / "single", TrainConfig(seed=5, **_quiet(40)), overrides)
    stacked_lines, single_lines = _metric_lines(tmp_path / "stack" / "seed_5"), _metric_lines(tmp_path / "single")
    assert [{k: v for k, v in line.items() if k != "seconds"} for line in stacked_lines] == \
        [{k: v for k, v in line.items() if k != "seconds"} for line in single_lines]
    reloaded = load_learner(tmp_path / "stack" / "seed_5")
    for mine, theirs in zip(reloaded.parameters(), single.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_models_of_a_stack_differ_and_the_stack_writes_ordinary_checkpoints(random_dataset, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dataset = random_dataset()
    dirs = seed_dirs(tmp_path, (0, 1))
    fit_seeds("bcq_lag", dataset, (0, 1), dirs, StackTrainConfig(**_quiet(5)), tiny["bcq_lag"])
    first, second = (load_learner(d, dataset) for d in dirs)
    assert not torch.equal(first.actor.net[0].weight, second.actor.net[0].weight)
    config = json.loads((dirs[1] / "config.json").read_text())
    assert config["train"]["seed"] == 1 and config["num_updates"] == 5
    metrics = first.update(BatchSampler(dataset, first.info.stats, 16).sample())   # trains on as a single learner
    assert all(torch.isfinite(value) for value in metrics.values())


def test_each_model_of_a_stack_trains_on_its_own_dataset(random_dataset, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    shards = [random_dataset(seed=1), random_dataset(seed=2, episodes=4)]
    stack = build_stack("bc_safe", shards, (0, 1), {**tiny["bc_safe"], "cost_limit": 5.0}, batch_size=16)
    train_stack(stack, shards, (0, 1), seed_dirs(tmp_path, (0, 1)), StackTrainConfig(**_quiet(3)))
    hashes = [load_learner(d).info.dataset_hash for d in seed_dirs(tmp_path, (0, 1))]
    assert hashes == [shard.dataset_hash() for shard in shards]


def test_bad_stacks_are_refused_before_training(random_dataset, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dataset = random_dataset()
    with pytest.raises(ConfigError, match="repeats 1"):
        build_stack("bcq_lag", [dataset] * 3, (1, 2, 1), tiny["bcq_lag"])
    with pytest.raises(ConfigError, match=r"need about .* GiB .* at most \d+ fit"):
        build_stack("bcq_lag", [dataset] * 4, (0, 1, 2, 3), tiny["bcq_lag"], memory_limit_bytes=(1 << 30) + 1000)
    taken = seed_dirs(tmp_path, (0,))
    fit_seeds("bc_safe", dataset, (0,), taken, StackTrainConfig(**_quiet(1)), {**tiny["bc_safe"], "cost_limit": 5.0})
    before = (taken[0] / "model.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a trained model"):
        fit_seeds("bc_safe", dataset, (0,), taken, StackTrainConfig(**_quiet(1)), {**tiny["bc_safe"], "cost_limit": 5.0})
    assert (taken[0] / "model.pt").read_bytes() == before
