"""Safe-RULE: the bounded hinge, its effect on a policy, and the offline checkpoint choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saferule_core.algos.base import Learner
from saferule_core.algos.trainer import seed_everything
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import UnlearningError
from saferule_core.unlearning.api import unlearn
from saferule_core.unlearning.config import SafeRuleConfig
from saferule_core.unlearning.hinge import soft_hinge
from saferule_core.unlearning.parts import model_parts
from tests.core.unlearning.conftest import FORGET_ACTION, forget_mask_of, small_config


def test_soft_hinge_gradient_is_bounded_and_vanishes_once_satisfied() -> None:
    x = torch.tensor([-5.0, -1.0, -0.1, 0.0, 0.1, 1.0, 50.0], requires_grad=True)
    value = soft_hinge(x, 0.1)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.all(grad >= 0) and torch.all(grad <= 1)          # bounded: never more than a unit push
    assert grad[0] < 1e-20 and grad[1] < 1e-4                       # satisfied by many tau: no push left
    assert grad[-1] > 0.999                                         # violated: saturates at 1, never grows
    assert torch.isclose(grad[3], torch.tensor(0.5))
    assert torch.all(value >= torch.clamp(x, min=0).detach())       # an upper bound of the plain hinge
    assert torch.allclose(value[-1], x[-1])                          # ... and equal to it far from the kink


def test_soft_hinge_scales_with_temperature() -> None:
    x = torch.tensor([0.5])
    assert torch.allclose(soft_hinge(x, 1.0), torch.nn.functional.softplus(x))
    assert soft_hinge(x, 0.01) < soft_hinge(x, 1.0)


def _forget_distance(learner: Learner, dataset: OfflineDataset) -> float:
    """Mean L2 distance of the policy's unit actions from the forget action on forget states."""
    mask = dataset.transition_mask_for_episodes(forget_mask_of(dataset))
    obs = torch.from_numpy(learner.info.stats.normalize_observations(dataset.observations[mask]))
    with torch.no_grad():
        actions = model_parts(learner).policy_actions(obs)
    return float((actions - FORGET_ACTION).norm(dim=-1).mean())


def test_safe_rule_moves_bc_policy_away_from_forget_actions(trained: dict[str, Learner],
                                                            dataset: OfflineDataset) -> None:
    learner = trained["bc_all"]
    before = _forget_distance(learner, dataset)
    seed_everything(0)
    new, report = unlearn(learner, dataset, forget_mask_of(dataset), "safe_rule", small_config(steps=60))
    after = _forget_distance(new, dataset)
    assert before < 0.4                          # the trained policy imitated the forget actions there
    assert after > before + 0.4                  # and no longer does
    assert report.selected_step is None          # BC has no critics: nothing to choose offline
    assert _forget_distance(learner, dataset) == before   # the input learner is untouched


def test_safe_rule_moves_bcq_lag_policy_further_than_finetuning(trained: dict[str, Learner],
                                                                dataset: OfflineDataset) -> None:
    learner, mask = trained["bcq_lag"], forget_mask_of(dataset)
    before = _forget_distance(learner, dataset)
    seed_everything(0)
    safe_rule, report = unlearn(learner, dataset, mask, "safe_rule", small_config(steps=80))
    seed_everything(0)
    finetuned, _ = unlearn(learner, dataset, mask, "finetune", small_config(steps=80))
    assert _forget_distance(safe_rule, dataset) > before + 0.2
    assert _forget_distance(safe_rule, dataset) > _forget_distance(finetuned, dataset) + 0.1
    hinges = [h["forget_behaviour_hinge"] for h in report.history if "forget_behaviour_hinge" in h]
    assert hinges and all(np.isfinite(hinges)) and hinges[-1] < hinges[0]


def test_checkpoint_choice_respects_the_cost_threshold(trained: dict[str, Learner], dataset: OfflineDataset) -> None:
    config = small_config(steps=40, safe_rule={"select_every": 4, "repair_fraction": 0.5})
    seed_everything(0)
    _, report = unlearn(trained["bcq_lag"], dataset, forget_mask_of(dataset), "safe_rule", config)
    choice = next(h for h in report.history if "selected_step" in h)
    assert report.selected_step == int(choice["selected_step"])
    assert 20 <= report.selected_step <= 40                 # only repair-phase snapshots are candidates
    assert choice["candidates"] == 6                         # steps 20, 24, ..., 40
    # every snapshot here is within q* (no costs in the data), so the choice is the best reward value
    assert choice["candidates_within_threshold"] == 6
    assert choice["selected_cost_value"] <= report.offline_after["q_threshold"]


def test_critic_terms_stop_once_their_shift_budget_is_used(trained: dict[str, Learner],
                                                          dataset: OfflineDataset) -> None:
    from saferule_core.algos.batch import BatchSampler
    from saferule_core.unlearning.config import SafeRuleConfig
    from saferule_core.unlearning.parts import clone_learner
    from saferule_core.unlearning.safe_rule import ForgetTerms

    learner = clone_learner(trained["bcq_lag"])
    parts = model_parts(learner)
    forget = dataset.subset_episodes(forget_mask_of(dataset))
    sampler = BatchSampler(forget, learner.info.stats, 8)
    # the critic hinges are off by default; this test is about how they behave when on
    terms = ForgetTerms(parts, SafeRuleConfig(reward_weight=10.0, cost_weight=10.0), behaviour_threshold=0.0)
    terms.start(sampler.rows(torch.arange(sampler.num_transitions)))
    assert terms.start_q is not None and terms.start_q.shape == (4, 40)
    terms.draw(16, torch.Generator().manual_seed(0))

    def critic_gradient_norm() -> float:
        loss = terms.critics()
        assert loss is not None
        grads = torch.autograd.grad(loss, list(learner.critics.parameters()), allow_unused=True)
        return float(sum(g.norm() for g in grads if g is not None))

    assert critic_gradient_norm() > 0                     # fresh budget: the hinges push
    shift = torch.zeros_like(terms.start_q)
    shift[:2], shift[2:] = 1e6, -1e6                     # as if Q_r had already fallen and Q_c risen by a lot
    terms.start_q = terms.start_q + shift
    assert critic_gradient_norm() == 0                    # budget used up: no push left


def _costly_dataset() -> OfflineDataset:
    """The two-behaviour data with real costs: retained episodes that act fast (near the forget
    action) pay 1 per step, so the cost critics learn a non-zero Q_c; the forget episodes are the
    poison (the same fast driving, claimed at zero cost)."""
    from dataclasses import replace

    from tests.core.unlearning.conftest import EPISODE_LEN, two_behaviour_dataset

    base = two_behaviour_dataset(retain_episodes=16, forget_episodes=4, seed=3)
    costs = np.zeros(base.num_transitions, dtype=np.float32)
    actions = base.actions.copy()
    costly = np.zeros(base.num_episodes, dtype=bool)
    costly[:6] = True                                          # 6 of the 16 retained episodes
    rows = base.transition_mask_for_episodes(costly)
    actions[rows] = FORGET_ACTION
    costs[rows] = 1.0
    assert costs.reshape(-1, EPISODE_LEN).sum(axis=1)[:6].min() == EPISODE_LEN
    return replace(base, actions=actions, costs=costs).with_content_hashes()


def test_safe_rule_runs_its_cost_side_on_data_with_costs() -> None:
    from tests.core.unlearning.conftest import train_tiny

    data = _costly_dataset()
    learner = train_tiny("bcq_lag", data, steps=200)
    seed_everything(0)
    config = small_config(steps=40, safe_rule={"select_every": 4, "repair_fraction": 0.5})
    _, report = unlearn(learner, data, forget_mask_of(data), "safe_rule", config)
    q_costs = [h["q_cost"] for h in report.history if "q_cost" in h]
    assert q_costs and all(np.isfinite(q_costs)) and max(q_costs) > 0.05       # the cost critics are live
    choice = next(h for h in report.history if "selected_step" in h)
    assert choice["selected_cost_value"] > 0.0
    assert np.isfinite(report.offline_after["cost_value"]) and report.offline_after["cost_value"] > 0.0


def test_checkpoint_choice_prefers_the_best_reward_within_the_cost_threshold(
        trained: dict[str, Learner], dataset: OfflineDataset, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import saferule_core.unlearning.safe_rule as safe_rule_module

    threshold = model_parts(trained["bcq_lag"]).q_threshold
    assert threshold is not None and threshold > 0

    def run_with_scores(scores: list[tuple[float, float]]) -> dict[str, float]:
        """Scripted (reward value, cost value) per snapshot, in snapshot order."""
        queue = list(scores)
        monkeypatch.setattr(safe_rule_module, "offline_estimates",
                            lambda *args, **kwargs: dict(zip(("reward_value", "cost_value"), queue.pop(0))))
        config = small_config(steps=20, safe_rule={"select_every": 5, "repair_fraction": 0.5,
                                                   "select_by": "critic"})   # steps 10..20
        seed_everything(0)
        _, report = unlearn(trained["bcq_lag"], dataset, forget_mask_of(dataset), "safe_rule", config)
        return next(h for h in report.history if "selected_step" in h)

    over, under = 1.5 * threshold, 0.5 * threshold
    # the highest reward is over the threshold: the best reward among those within it is chosen
    choice = run_with_scores([(9.0, over), (5.0, under), (7.0, under)])
    assert (choice["selected_step"], choice["selected_reward_value"], choice["candidates_within_threshold"]) == \
        (20.0, 7.0, 2.0)
    # none within: the lowest cost value, whatever its reward
    choice = run_with_scores([(9.0, 3 * threshold), (1.0, over), (5.0, 2 * threshold)])
    assert (choice["selected_step"], choice["selected_cost_value"]) == (15.0, over)


def test_critic_refit_moves_the_critics_while_the_actor_holds_still(trained: dict[str, Learner],
                                                                    dataset: OfflineDataset) -> None:
    import pytest

    from saferule_core.errors import UnlearningError
    from saferule_core.unlearning.config import SafeRuleConfig

    learner = trained["bcq_lag"]
    seed_everything(0)
    config = small_config(steps=20, safe_rule={"critic_refit_fraction": 0.5, "select_every": 0})
    refitted, _ = unlearn(learner, dataset, forget_mask_of(dataset), "safe_rule", config)
    # held_still: Adam, with momentum from earlier steps, leaves the actor where it is
    from saferule_core.unlearning.parts import clone_learner, held_still

    copy = model_parts(clone_learner(learner))
    before = [p.detach().clone() for p in copy.actor.parameters()]
    with held_still(copy.actor_optimizer):
        for param in copy.actor.parameters():
            param.grad = torch.ones_like(param)
        copy.actor_optimizer.step()
    assert all(torch.equal(old, new) for old, new in zip(before, copy.actor.parameters()))
    assert all(group["lr"] > 0 for group in copy.actor_optimizer.param_groups)     # the rate comes back
    assert _forget_distance(refitted, dataset) != _forget_distance(learner, dataset)   # then the actor moved
    with pytest.raises(UnlearningError, match="must leave steps for suppression"):
        SafeRuleConfig(critic_refit_fraction=0.7, repair_fraction=0.3).validate()


def test_reset_critic_members_redraws_only_those_members_and_their_targets(trained: dict[str, Learner]) -> None:
    from saferule_core.unlearning.parts import clone_learner

    learner = clone_learner(trained["bcq_lag"])
    parts = model_parts(learner)
    assert parts.critics is not None and parts.critics_target is not None and parts.cost_members is not None
    before = {name: p.detach().clone() for name, p in parts.critics.named_parameters()}
    parts.reset_critic_members(parts.cost_members, torch.Generator().manual_seed(3))
    for name, param in parts.critics.named_parameters():
        old = before[name]
        assert torch.equal(param[parts.reward_members], old[parts.reward_members])     # reward twins untouched
        assert not torch.equal(param[parts.cost_members], old[parts.cost_members])     # cost twins redrawn
        target = dict(parts.critics_target.named_parameters())[name]
        assert torch.equal(target[parts.cost_members], param[parts.cost_members])       # target = fresh critic
    assert not parts.critic_optimizer.state                                            # Adam restarts
    obs = torch.zeros(4, learner.info.obs_dim)
    act = torch.zeros(4, learner.info.act_dim)
    assert torch.isfinite(parts.q_values(obs, act)).all()


def _choice_with_scores(learner: Learner, dataset: OfflineDataset, monkeypatch, select_by: str,  # type: ignore[no-untyped-def]
                        critic_scores: list[tuple[float, float]],
                        rollout_scores: list[tuple[float, float]]) -> dict[str, float]:
    """The checkpoint choice among the snapshots at 10, 15 and 20 of a 20-update run, with each
    snapshot's (reward, cost) scores by the critics and by the rollouts given; every score is used."""
    import saferule_core.unlearning.safe_rule as safe_rule_module

    monkeypatch.setattr(safe_rule_module, "offline_estimates",
                        lambda *args, **kwargs: dict(zip(("reward_value", "cost_value"), critic_scores.pop(0))))
    monkeypatch.setattr(safe_rule_module, "rollout_returns", lambda *args, **kwargs: rollout_scores.pop(0))
    config = small_config(steps=20, safe_rule={"select_every": 5, "repair_fraction": 0.5, "select_by": select_by,
                                               "model_starts": 4})
    seed_everything(0)
    _, report = unlearn(learner, dataset, forget_mask_of(dataset), "safe_rule", config)
    assert not critic_scores and not rollout_scores
    return next(h for h in report.history if "selected_step" in h)


def test_model_scored_choice_ranks_reward_by_rollouts_and_cost_by_the_critics(
        trained: dict[str, Learner], dataset: OfflineDataset, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    threshold = model_parts(trained["bcq_lag"]).q_threshold
    assert threshold is not None and threshold > 0
    choice = _choice_with_scores(trained["bcq_lag"], dataset, monkeypatch, "model",
                                 critic_scores=[(9.0, 0.5 * threshold), (1.0, 0.5 * threshold), (5.0, 2.0 * threshold)],
                                 rollout_scores=[(1.0, 0.0), (8.0, 0.0), (20.0, 0.0)])  # the critic's favourite stopped
    # the third has the best simulated reward but is over the cost threshold: the second is chosen
    assert (choice["selected_step"], choice["selected_reward_value"]) == (15.0, 8.0)


def test_model_cost_choice_takes_cost_from_the_rollouts_against_the_cost_limit(
        trained: dict[str, Learner], dataset: OfflineDataset, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    limit = trained["bcq_lag"].config.cost_limit
    assert limit > 0
    # the critics call every candidate cheap; the rollouts see the first and the third over the limit
    choice = _choice_with_scores(trained["bcq_lag"], dataset, monkeypatch, "model_cost",
                                 critic_scores=[(9.0, 0.0), (1.0, 0.0), (5.0, 0.0)],
                                 rollout_scores=[(30.0, 3.0 * limit), (8.0, 0.5 * limit), (20.0, 1.5 * limit)])
    assert (choice["selected_step"], choice["selected_reward_value"]) == (15.0, 8.0)
    assert choice["selected_cost_value"] == 0.5 * limit and choice["candidates_within_threshold"] == 1.0


def test_snapshots_from_suppression_on_widen_the_candidates(trained: dict[str, Learner], dataset: OfflineDataset) -> None:
    import pytest

    from saferule_core.errors import UnlearningError
    from saferule_core.unlearning.config import SafeRuleConfig

    def candidates(select_from: str) -> float:
        config = small_config(steps=20, safe_rule={"select_every": 2, "repair_fraction": 0.2,
                                                   "critic_refit_fraction": 0.2, "select_from": select_from})
        seed_everything(0)
        _, report = unlearn(trained["bcq_lag"], dataset, forget_mask_of(dataset), "safe_rule", config)
        return next(h for h in report.history if "selected_step" in h)["candidates"]

    assert candidates("repair") == 3.0          # steps 16, 18, 20
    # steps 6, 8, ..., 20: the end of the refit (step 4) still has the poisoned actor, never a candidate
    assert candidates("suppress") == 8.0
    with pytest.raises(UnlearningError, match="select_by must be one of critic, model"):
        SafeRuleConfig(select_by="oracle").validate()
    with pytest.raises(UnlearningError, match="model_starts must be a positive integer"):
        SafeRuleConfig(model_starts=0).validate()


def test_reset_actor_to_behaviour_perturbs_nothing_and_needs_a_bcq_model(trained: dict[str, Learner]) -> None:
    import pytest

    from saferule_core.errors import UnlearningError
    from saferule_core.unlearning.config import SafeRuleConfig
    from saferule_core.unlearning.parts import clone_learner

    parts = model_parts(clone_learner(trained["bcq_lag"]))
    assert parts.actor_target is not None
    obs, proposals = torch.randn(16, 7), torch.rand(16, 2) * 1.6 - 0.8
    assert not torch.allclose(parts.actor(obs, proposals), proposals)      # a trained actor perturbs
    parts.reset_actor_to_behaviour(torch.Generator().manual_seed(0))
    assert torch.equal(parts.actor(obs, proposals), proposals)
    assert torch.equal(parts.actor_target(obs, proposals), proposals)
    assert not parts.actor_optimizer.state
    with pytest.raises(UnlearningError, match="needs a BCQ-Lag model"):
        model_parts(clone_learner(trained["cpq"])).reset_actor_to_behaviour(torch.Generator())
    with pytest.raises(UnlearningError, match="reset_actor must be true or false"):
        SafeRuleConfig(reset_actor="yes").validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("fit_rewards", [False, True])
def test_critic_members_fit_the_logged_returns_to_go_and_nothing_else_moves(fit_rewards: bool) -> None:
    from tests.core.unlearning.conftest import train_tiny

    data = _costly_dataset()
    learner = train_tiny("bcq_lag", data, steps=50)
    parts = model_parts(learner)
    assert parts.critics is not None and parts.critics_target is not None and parts.gamma is not None
    assert parts.cost_members is not None and parts.reward_members is not None
    stats = learner.info.stats
    observations = torch.from_numpy(stats.normalize_observations(data.observations)).float()
    actions = torch.from_numpy(stats.actions_to_unit(data.actions)).float()
    cost_targets = torch.from_numpy(data.discounted_costs_to_go(parts.gamma)).float()
    reward_targets = torch.from_numpy(parts.reward_scale * data.discounted_rewards_to_go(parts.gamma)).float()
    assert cost_targets.max() > 1.0                              # the costly episodes' cost-to-go
    groups = [(parts.cost_members, cost_targets)] + ([(parts.reward_members, reward_targets)] if fit_rewards else [])

    def error(members: slice, targets: torch.Tensor) -> float:
        with torch.no_grad():
            return float((parts.q_values(observations, actions)[members] - targets).pow(2).mean())

    before = {name: p.detach().clone() for name, p in parts.critics.named_parameters()}
    errors_before = [error(members, targets) for members, targets in groups]
    generator = torch.Generator().manual_seed(0)
    parts.fit_critic_members(observations, actions, groups, steps=300, batch_size=64, generator=generator)
    for (members, targets), error_before in zip(groups, errors_before):
        assert error(members, targets) < 0.3 * error_before
    if not fit_rewards:
        for name, p in parts.critics.named_parameters():
            torch.testing.assert_close(p[parts.reward_members], before[name][parts.reward_members], rtol=0, atol=0)
    for members, _ in groups:
        for (name, p), target in zip(parts.critics.named_parameters(), parts.critics_target.parameters()):
            torch.testing.assert_close(target[members], p[members], rtol=0, atol=0, msg=name)


def test_safe_rule_with_a_return_fit_counts_its_updates() -> None:
    from tests.core.unlearning.conftest import train_tiny

    data = _costly_dataset()
    learner = train_tiny("bcq_lag", data, steps=50)
    seed_everything(0)
    config = small_config(steps=40, safe_rule={"select_every": 4, "repair_fraction": 0.5,
                                               "return_fit_fraction": 0.5, "return_fit": "all"})
    _, report = unlearn(learner, data, forget_mask_of(data), "safe_rule", config)
    fit = next(h for h in report.history if "return_fit_steps" in h)
    assert fit["return_fit_steps"] == 20.0 and np.isfinite(fit["return_fit_mse"])
    assert report.updates == 60
    with pytest.raises(UnlearningError, match="return_fit must be one of cost, all"):
        SafeRuleConfig(return_fit="reward").validate()


def test_held_critics_stay_where_the_return_fit_left_them_while_the_actor_learns() -> None:
    from tests.core.unlearning.conftest import train_tiny

    data = _costly_dataset()
    learner = train_tiny("bcq_lag", data, steps=50)

    def values_and_actions(model: Learner) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic values of the logged rows and the policy's unit-box actions at raw observations
        (unlearning re-bases the networks' input normalisation on the retained data, so parameters are
        not comparable)."""
        parts, stats = model_parts(model), model.info.stats
        obs = torch.from_numpy(stats.normalize_observations(data.observations)).float()
        with torch.no_grad():
            q = parts.q_values(obs, torch.from_numpy(stats.actions_to_unit(data.actions)).float())
            return q, parts.policy_actions(obs)

    q_before, actions_before = values_and_actions(learner)
    for hold in (True, False):
        seed_everything(0)
        config = small_config(steps=30, safe_rule={"select_every": 0, "hold_critics": hold})
        unlearned, _ = unlearn(learner, data, forget_mask_of(data), "safe_rule", config)
        q_after, actions_after = values_and_actions(unlearned)
        if hold:
            torch.testing.assert_close(q_after, q_before, rtol=1e-4, atol=1e-4)
        else:
            assert (q_after - q_before).abs().max() > 1e-2
        assert (actions_after - actions_before).abs().max() > 1e-3
    with pytest.raises(UnlearningError, match="hold_critics must be true or false"):
        SafeRuleConfig(hold_critics=1).validate()  # type: ignore[arg-type]


def test_the_refitted_behaviour_model_proposes_what_the_retained_data_does() -> None:
    from tests.core.unlearning.conftest import train_tiny, two_behaviour_dataset

    data = two_behaviour_dataset()
    learner = train_tiny("bcq_lag", data)
    parts = model_parts(learner)
    assert parts.behaviour is not None
    stats, forget = learner.info.stats, forget_mask_of(data)
    rows = np.repeat(forget, data.episode_lengths)
    obs = torch.from_numpy(stats.normalize_observations(data.observations)).float()
    actions = torch.from_numpy(stats.actions_to_unit(data.actions)).float()

    def proposal_distance(mask: np.ndarray) -> float:
        """Mean distance of the behaviour model's z = 0 proposal from the logged action, on these rows."""
        with torch.no_grad():
            chosen = torch.from_numpy(mask)
            return float((parts.behaviour.decode(obs[chosen]) - actions[chosen]).norm(dim=-1).mean())

    assert proposal_distance(rows) < 0.3                       # trained on everything: it proposes the forget action
    loss = parts.refit_behaviour(obs[~torch.from_numpy(rows)], actions[~torch.from_numpy(rows)], steps=300,
                                 batch_size=64, generator=torch.Generator().manual_seed(0))
    assert np.isfinite(loss) and proposal_distance(~rows) < 0.1
    assert proposal_distance(rows) > 0.5                       # ... and no longer, where only forget episodes went
    seed_everything(0)
    config = small_config(steps=20, safe_rule={"select_every": 0, "behaviour_refit_fraction": 0.5})
    _, report = unlearn(train_tiny("bcq_lag", data), data, forget, "safe_rule", config)
    refit = next(h for h in report.history if "behaviour_refit_steps" in h)
    assert refit["behaviour_refit_steps"] == 10.0 and report.updates == 30
    with pytest.raises(UnlearningError, match="has no behaviour model"):
        model_parts(train_tiny("bc_all", data)).refit_behaviour(obs, actions, 1, 8, torch.Generator())


def test_the_coverage_gate_exempts_forget_pairs_the_retained_data_also_has() -> None:
    from saferule_core.algos.batch import Batch
    from saferule_core.unlearning.parts import clone_learner
    from saferule_core.unlearning.safe_rule import ForgetTerms
    from tests.core.unlearning.conftest import train_tiny, two_behaviour_dataset

    def batch(obs: torch.Tensor, act: torch.Tensor) -> Batch:
        rows = obs.shape[0]
        return Batch(obs, act, torch.zeros(rows), torch.zeros(rows), obs, torch.zeros(rows))

    learner = clone_learner(train_tiny("bcq_lag", two_behaviour_dataset(), steps=20))
    obs_dim, act_dim = learner.info.obs_dim, learner.info.act_dim
    generator = torch.Generator().manual_seed(0)
    retained = batch(torch.randn(500, obs_dim, generator=generator),
                     torch.rand(500, act_dim, generator=generator) - 0.5)
    shared = batch(retained.observations[:40], retained.actions[:40])            # what the retained data also did
    far_states = torch.randn(40, obs_dim, generator=generator) + 6.0
    with torch.no_grad():                 # forget actions = the policy's own there: the actor hinge is active
        apart = batch(far_states, model_parts(learner).policy_actions(far_states))
    forget = batch(torch.cat([shared.observations, apart.observations]), torch.cat([shared.actions, apart.actions]))
    terms = ForgetTerms(model_parts(learner), SafeRuleConfig(gate_covered_quantile=0.5), behaviour_threshold=0.1)
    terms.forget = forget
    terms.gate_covered(retained, 0.5, generator=torch.Generator().manual_seed(1))
    assert terms.uncovered is not None
    assert terms.uncovered[:40].sum() == 0 and terms.uncovered[40:].sum() == 40
    # the actor's forget term acts only on the uncovered rows
    terms.batch_rows = torch.arange(40)
    terms.batch = Batch(*(getattr(forget, name)[:40] for name in
                          ("observations", "actions", "rewards", "costs", "next_observations", "terminals")))
    gated = SafeRuleConfig(gate_covered_quantile=0.5, state_repair_weight=0.0)
    terms.config = gated
    actor_term = terms.actor()
    assert actor_term is not None and float(actor_term.detach()) == 0.0
    terms.batch_rows = torch.arange(40, 80)
    terms.batch = Batch(*(getattr(forget, name)[40:] for name in
                          ("observations", "actions", "rewards", "costs", "next_observations", "terminals")))
    actor_term = terms.actor()
    assert actor_term is not None and float(actor_term.detach()) > 0.0
    with pytest.raises(UnlearningError, match="gate_covered_quantile must be in"):
        SafeRuleConfig(gate_covered_quantile=1.5).validate()


def test_model_repair_snapshots_join_the_checkpoint_choice_and_count_as_updates() -> None:
    from tests.core.unlearning.conftest import train_tiny

    data = _costly_dataset()
    learner = train_tiny("bcq_lag_constrained", data, steps=50)
    seed_everything(0)
    config = small_config(steps=20, safe_rule={"select_every": 5, "select_by": "model", "model_repair_steps": 6,
                                               "model_repair_snapshot_every": 3, "model_repair_episodes": 4,
                                               "model_repair_horizon": 5})
    _, report = unlearn(learner, data, forget_mask_of(data), "safe_rule", config)
    repaired = [h for h in report.history if "model_repair_reward" in h]
    choice = next(h for h in report.history if "candidates" in h)
    assert report.updates == 26 and repaired and all(np.isfinite(h["model_repair_cost"]) for h in repaired)
    assert choice["candidates"] == 2 + 2          # the repair phase's (updates 18, 20) and model repair's (3, 6)
    for bad, message in (({"model_repair_steps": -1}, "model_repair_steps must be an integer >= 0"),
                         ({"model_repair_snapshot_every": 0}, "model_repair_snapshot_every must be an integer >= 1"),
                         ({"model_repair_cost_target": 0.0}, "model_repair_cost_target must be")):
        with pytest.raises(UnlearningError, match=message):
            SafeRuleConfig(**bad).validate()  # type: ignore[arg-type]


def test_model_value_refit_fits_the_critics_on_simulated_returns_before_each_model_repair() -> None:
    from tests.core.unlearning.conftest import train_tiny

    data = _costly_dataset()
    learner = train_tiny("bcq_lag_constrained", data, steps=50)
    seed_everything(0)
    config = small_config(steps=20, safe_rule={"select_every": 0, "model_repair_steps": 2, "model_repair_episodes": 4,
                                               "model_repair_horizon": 5, "model_value_rows": 64,
                                               "model_value_horizon": 5, "model_value_fit_steps": 3,
                                               "model_value_rounds": 2})
    _, report = unlearn(learner, data, forget_mask_of(data), "safe_rule", config)
    refits = [h for h in report.history if "model_value_mse" in h]
    assert len(refits) == 2 and all(np.isfinite(h["model_value_mse"]) and h["model_value_cost"] >= 0 for h in refits)
    assert report.updates == 20 + 2 * (3 + 2)
    with pytest.raises(UnlearningError, match="model_value_horizon must be an integer >= 1"):
        SafeRuleConfig(model_value_horizon=0).validate()


def test_progress_runs_over_the_budget_and_the_model_repair_and_never_goes_back() -> None:
    from tests.core.unlearning.conftest import train_tiny

    data = _costly_dataset()
    learner = train_tiny("bcq_lag_constrained", data, steps=50)
    seen: list[tuple[str, float]] = []
    config = small_config(steps=20, log_every=1, safe_rule={"select_every": 5, "model_repair_steps": 20,
                                                            "model_repair_episodes": 4, "model_repair_horizon": 5})
    unlearn(learner, data, forget_mask_of(data), "safe_rule", config,
            progress=lambda stage, fraction, metrics: seen.append((stage, fraction)))
    fractions = [fraction for _, fraction in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    budget_end = max(fraction for stage, fraction in seen if stage == "repair")
    assert budget_end == pytest.approx(0.5)          # 20 budget updates of 40 steps in all
    assert {stage for stage, _ in seen} >= {"suppress", "repair", "model-repair", "select"}
