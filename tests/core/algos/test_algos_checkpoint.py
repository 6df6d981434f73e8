from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saferule_core.algos.batch import BatchSampler
from saferule_core.algos.checkpoint import CONFIG_FILE, MODEL_FILE, load_learner, load_policy, save_model
from saferule_core.algos.registry import ALGORITHMS, get_algo, make_config
from saferule_core.errors import ModelError


def trained(algo: str, dataset, tiny, steps: int = 3):
    torch.manual_seed(0)
    learner = get_algo(algo).learner_class.from_dataset(dataset, make_config(algo, tiny[algo]))
    sampler = BatchSampler(dataset, learner.info.stats, batch_size=32)
    for _ in range(steps):
        learner.update(sampler.sample())
    return learner, sampler


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_save_load_round_trip_gives_identical_actions_and_updates(algo, random_dataset, tiny, tmp_path: Path) -> None:
    ds = random_dataset()
    learner, sampler = trained(algo, ds, tiny)
    save_model(tmp_path / "m", learner)
    loaded = load_learner(tmp_path / "m", dataset=ds)
    assert type(loaded) is type(learner) and loaded.info == learner.info and loaded.config == learner.config
    assert loaded.num_updates == 3
    obs = torch.from_numpy(ds.observations[:20])
    assert torch.equal(loaded.deployable_policy()(obs), learner.deployable_policy()(obs))
    # Optimizer and controller state came back too: the next update is the same.
    batch = sampler.sample()
    torch.manual_seed(11)
    expected = learner.update(batch)
    torch.manual_seed(11)
    got = loaded.update(batch)
    assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in expected.items()}


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_deployable_policy_equals_policy_fn(algo, random_dataset, tiny, tmp_path: Path) -> None:
    ds = random_dataset()
    learner, _ = trained(algo, ds, tiny, steps=2)
    save_model(tmp_path / "m", learner)
    policy_fn, task = load_policy(tmp_path / "m")
    assert task == "CarCircle"
    obs = ds.observations[:17]
    actions = policy_fn(obs)
    assert actions.shape == (17, ds.act_dim) and actions.dtype == np.float32
    assert np.abs(actions).max() <= 1.0
    np.testing.assert_array_equal(actions, learner.deployable_policy()(torch.from_numpy(obs)).numpy())
    np.testing.assert_array_equal(policy_fn(obs), actions)                  # deterministic
    with pytest.raises(ModelError, match="shape"):
        policy_fn(obs[:, :3])


def test_deployable_policy_scales_to_the_env_bounds(dataset_builder, tiny, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ds = dataset_builder(rng.normal(size=(100, 3)), rng.uniform(0, 4, size=(100, 2)), np.zeros(100), episode_len=20,
                         attrs={"action_low": "[0, 0]", "action_high": "[4, 2]"})
    learner, _ = trained("bc_all", ds, tiny)
    save_model(tmp_path / "m", learner)
    policy_fn, _ = load_policy(tmp_path / "m")
    unit = policy_fn(ds.observations)
    scaled = learner.deployable_policy()(torch.from_numpy(ds.observations)).numpy()
    np.testing.assert_allclose(scaled, (unit + 1.0) * 0.5 * np.array([4.0, 2.0]), rtol=1e-6, atol=1e-6)
    assert scaled.min() >= 0.0 and scaled[:, 0].max() <= 4.0 and scaled[:, 1].max() <= 2.0


def test_model_directory_records_what_the_model_is_for(random_dataset, tiny, tmp_path: Path) -> None:
    ds = random_dataset(task="BallRun")
    learner, _ = trained("bcq_lag", ds, tiny)
    save_model(tmp_path / "m", learner)
    meta = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert meta["algo"] == "bcq_lag" and meta["info"]["task"] == "BallRun"
    assert (meta["info"]["obs_dim"], meta["info"]["act_dim"]) == (8, 2)
    assert meta["info"]["dataset_hash"] == ds.dataset_hash()
    assert meta["config"]["episode_len"] == 100 and meta["config"]["critic_hidden"] == [32, 32]
    assert len(meta["info"]["normalization"]["obs_mean"]) == 8
    assert not list((tmp_path / "m").glob("*.tmp"))                     # no leftovers of atomic writes


def test_loading_refuses_a_dataset_with_other_spaces(random_dataset, tiny, tmp_path: Path) -> None:
    learner, _ = trained("bc_safe", random_dataset(obs_dim=8), tiny)
    save_model(tmp_path / "m", learner)
    with pytest.raises(ModelError, match="obs_dim=8.*obs_dim=5"):
        load_learner(tmp_path / "m", dataset=random_dataset(obs_dim=5))
    with pytest.raises(ModelError, match="act_dim"):
        load_policy(tmp_path / "m", dataset=random_dataset(act_dim=3))


def test_missing_corrupt_or_foreign_checkpoints_are_refused(random_dataset, tiny, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no trained model"):
        load_learner(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MODEL_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable"):
        load_learner(bad)
    torch.save({"weights": torch.zeros(3)}, bad / MODEL_FILE)
    with pytest.raises(ModelError, match="not a SafeRULE model"):
        load_learner(bad)
    learner, _ = trained("bc_all", random_dataset(), tiny)
    save_model(tmp_path / "ok", learner)
    payload = torch.load(tmp_path / "ok" / MODEL_FILE, weights_only=True)
    payload["config"]["hidden"] = (64, 64)                              # networks no longer fit the state
    torch.save(payload, bad / MODEL_FILE)
    with pytest.raises(ModelError, match="does not match"):
        load_learner(bad)
