"""Baselines: retraining is exactly a fresh fit on the retained data; NegGrad+ and TrajDeleter
leave the constraint controllers where the method says."""

from __future__ import annotations

from pathlib import Path

import torch

from saferule_core.algos.base import Learner
from saferule_core.algos.trainer import TrainConfig, fit
from saferule_core.data.dataset import OfflineDataset
from saferule_core.unlearning.api import unlearn
from saferule_core.unlearning.parts import frozen_buffers, network_state, scaled_gradients
from tests.core.unlearning.conftest import forget_mask_of, small_config


def _same_weights(a: Learner, b: Learner) -> bool:
    sa, sb = network_state(a), network_state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[n][k], sb[n][k]) for n in sa for k in sa[n])


def test_retrain_is_a_fresh_fit_on_the_retained_data(trained: dict[str, Learner], dataset: OfflineDataset,
                                                     tmp_path: Path) -> None:
    learner, mask = trained["bcq_lag"], forget_mask_of(dataset)
    config = small_config(seed=3, retrain_steps=15, batch_size=32, num_threads=1)
    retrained, report = unlearn(learner, dataset, mask, "retrain", config)
    expected, _ = fit("bcq_lag", dataset.subset_episodes(~mask), tmp_path / "fresh",
                      TrainConfig(steps=15, batch_size=32, seed=3, num_threads=1, log_every=5, checkpoint_every=0,
                                  progress=False), overrides=learner.config_dict())
    assert _same_weights(retrained, expected)
    assert retrained.info.stats == expected.info.stats          # normalisation from the retained data only
    assert report.updates == 15 and retrained.num_updates == 15
    other_seed, _ = unlearn(learner, dataset, mask, "retrain", small_config(seed=4, retrain_steps=15, batch_size=32,
                                                                            num_threads=1))
    assert not _same_weights(retrained, other_seed)


def test_retrain_defaults_to_the_models_own_training_length(trained: dict[str, Learner],
                                                            dataset: OfflineDataset) -> None:
    learner = trained["bc_all"]
    _, report = unlearn(learner, dataset, forget_mask_of(dataset), "retrain", small_config(retrain_steps=0))
    assert report.updates == learner.num_updates == 150


def test_frozen_buffers_restore_the_lagrange_multiplier(trained: dict[str, Learner], dataset: OfflineDataset) -> None:
    from saferule_core.algos.batch import BatchSampler
    from saferule_core.unlearning.parts import clone_learner

    learner = clone_learner(trained["bcq_lag"])
    sampler = BatchSampler(dataset, learner.info.stats, 32)
    before = learner.lagrangian.integral.clone(), learner.lagrangian.multiplier.clone()
    with frozen_buffers(learner):
        for _ in range(3):
            learner.update(sampler.sample())
    assert torch.equal(learner.lagrangian.integral, before[0])
    assert torch.equal(learner.lagrangian.multiplier, before[1])


def test_scaled_gradients_turn_descent_into_ascent() -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    with scaled_gradients([optimizer], -0.5):
        optimizer.zero_grad()
        (weight ** 2).sum().backward()       # gradient 2 -> scaled to -1
        optimizer.step()
    assert torch.allclose(weight.detach(), torch.tensor([1.1]))
    optimizer.zero_grad()
    (weight ** 2).sum().backward()            # the hook is gone: plain descent again
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.tensor([1.1 - 0.22]))
