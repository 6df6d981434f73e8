"""Safe-RULE: bounded suppression of the forget set, cost-aware repair on retained data, offline
checkpoint choice. The math and the reasons are in docs/safe_rule.md.

Each step runs the learner's own update on a retained batch; the forget terms join that same
update through optimizer step pre-hooks (one Adam step per part on retained loss + forget term),
so the Lagrange multiplier keeps adapting on retained states and no learner loss is restated here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from saferule_core.algos.batch import Batch
from saferule_core.unlearning.config import SafeRuleConfig
from saferule_core.unlearning.dynamics import (
    DynamicsEnsemble,
    DynamicsSettings,
    RolloutStarts,
    fit_dynamics,
    rollout_returns,
    rollout_starts,
)
from saferule_core.unlearning.hinge import soft_hinge
from saferule_core.unlearning.methods import MethodOutcome
from saferule_core.unlearning.model_repair import ModelRepairSettings, repair_on_model, simulated_values
from saferule_core.unlearning.parts import (
    ModelParts,
    clone_learner,
    extra_gradient,
    held_still,
    load_network_state,
    model_parts,
    network_state,
)
from saferule_core.unlearning.session import ScoringStates, Session, offline_estimates

SCALE_FLOOR = 1e-3   # smallest unit a relative margin is measured in


@dataclass
class ForgetTerms:
    """Safe-RULE's forget-data terms for one model.

    `start` fixes, when suppression begins, every forget transition's critic values and the reward
    unit, so that each critic term moves its value at most a bounded distance from where it
    started: the terms saturate when their constraint is met AND when that budget is used up.
    """

    parts: ModelParts
    config: SafeRuleConfig
    behaviour_threshold: float          # eps*
    forget: Batch | None = None         # every forget transition
    start_q: torch.Tensor | None = None  # critic values of the forget transitions at the start [members, N]
    reward_unit: float = 1.0            # mean |Q_r(s, pi(s))| on forget states at the start
    batch: Batch | None = None
    batch_rows: torch.Tensor | None = None
    last: dict[str, torch.Tensor] | None = None
    uncovered: torch.Tensor | None = None   # [N] 1.0 where the retained data does not cover the forget (s, a)

    @torch.no_grad()
    def start(self, forget: Batch, chunk: int = 8192) -> None:
        self.forget = forget
        if not self.parts.has_critics:
            return
        assert self.parts.reward_members is not None
        values, policy_values = [], []
        for begin in range(0, forget.size, chunk):
            obs = forget.observations[begin:begin + chunk]
            values.append(self.parts.q_values(obs, forget.actions[begin:begin + chunk]))
            policy_q = self.parts.q_values(obs, self.parts.policy_actions(obs))
            policy_values.append(policy_q[self.parts.reward_members].min(dim=0).values)
        self.start_q = torch.cat(values, dim=1)
        self.reward_unit = max(float(torch.cat(policy_values).abs().mean()), SCALE_FLOOR)

    def draw(self, size: int, generator: torch.Generator) -> None:
        """The next forget batch (uniform, with replacement)."""
        assert self.forget is not None
        rows = torch.randint(self.forget.size, (size,), generator=generator, device=self.forget.observations.device)
        self.batch_rows = rows
        self.batch = Batch(*(getattr(self.forget, name).index_select(0, rows) for name in
                             ("observations", "actions", "rewards", "costs", "next_observations", "terminals")))

    def _gate(self) -> torch.Tensor | float:
        """Per row of the batch: 1 where the actor and behaviour terms act, 0 where the retained data
        covers the forget (state, action) (`gate_covered_quantile`); 1 everywhere when the gate is off."""
        if self.uncovered is None or self.batch_rows is None:
            return 1.0
        return self.uncovered.index_select(0, self.batch_rows)

    @torch.no_grad()
    def gate_covered(self, retained: Batch, quantile: float, reference_rows: int = 2048, chunk: int = 256,
                     generator: torch.Generator | None = None) -> None:
        """Mark which forget transitions the retained data does not cover: a forget (normalised state,
        unit action) is covered when its nearest retained transition is no farther than the retained
        data's own nearest-neighbour distance at `quantile` (measured on `reference_rows` of them).
        Where the forget episodes did what the retained ones also do (the same start, the same
        acceleration), pushing the policy away from that action would push it away from the retained
        behaviour as well."""
        assert self.forget is not None

        def features(batch: Batch) -> torch.Tensor:
            return torch.cat([batch.observations, batch.actions], dim=-1).float()

        pool = features(retained)

        def nearest(queries: torch.Tensor, skip_self: bool) -> torch.Tensor:
            found = []
            for begin in range(0, queries.shape[0], chunk):
                distances = torch.cdist(queries[begin:begin + chunk], pool)
                found.append(distances.topk(2 if skip_self else 1, dim=1, largest=False).values[:, -1])
            return torch.cat(found)

        picks = torch.randperm(pool.shape[0], generator=generator, device=pool.device)[:reference_rows]
        threshold = torch.quantile(nearest(pool[picks], skip_self=True), quantile)
        self.uncovered = (nearest(features(self.forget), skip_self=False) > threshold).float()

    def _record(self, name: str, value: torch.Tensor) -> None:
        if self.last is not None:
            self.last[name] = value.detach()

    def critics(self) -> torch.Tensor | None:
        """Reward value of forget actions below the policy's own value (by m_r); their cost value
        at least the policy's (plus m_c). Per critic member; the comparison point is detached; each
        value moves at most max_reward_drop (reward units) / max_cost_rise (q* units) from its start."""
        parts, cfg, batch = self.parts, self.config, self.batch
        if batch is None or not parts.has_critics or (cfg.reward_weight == 0 and cfg.cost_weight == 0):
            return None
        assert parts.reward_members is not None and parts.cost_members is not None
        assert self.start_q is not None and self.batch_rows is not None
        reward_unit = self.reward_unit
        cost_unit = max(float(parts.q_threshold or 0.0), SCALE_FLOOR)
        with torch.no_grad():
            q_policy = parts.q_values(batch.observations, parts.policy_actions(batch.observations))
            reward_ref = q_policy[parts.reward_members].min(dim=0).values
            # Forgetting a transition removes the evidence that its action is cheap: its cost value is
            # raised to at least the threshold q* (cost_floor), not only to the policy's own value,
            # which the same poison has kept low where the policy imitates the forget actions.
            cost_ref = q_policy[parts.cost_members].max(dim=0).values.clamp(min=cfg.cost_floor * cost_unit)
            start = self.start_q[:, self.batch_rows]
        q_forget = parts.q_values(batch.observations, batch.actions)
        q_reward, q_cost = q_forget[parts.reward_members], q_forget[parts.cost_members]
        reward_gap = q_reward - reward_ref + cfg.reward_margin * reward_unit
        cost_gap = cost_ref + cfg.cost_margin * cost_unit - q_cost
        with torch.no_grad():
            reward_room = (q_reward > start[parts.reward_members] - cfg.max_reward_drop * reward_unit).float()
            cost_room = (q_cost < start[parts.cost_members] + cfg.max_cost_rise * cost_unit).float()
        reward_term = (reward_room * soft_hinge(reward_gap, cfg.temperature * reward_unit)).mean(dim=1).sum()
        cost_term = (cost_room * soft_hinge(cost_gap, cfg.temperature * cost_unit)).mean(dim=1).sum()
        self._record("forget_reward_hinge", reward_term)
        self._record("forget_cost_hinge", cost_term)
        self._record("forget_reward_violation", (reward_gap > 0).float().mean())
        self._record("forget_cost_violation", (cost_gap > 0).float().mean())
        self._record("forget_reward_budget_left", reward_room.mean())
        self._record("forget_cost_budget_left", cost_room.mean())
        return cfg.reward_weight * reward_term + cfg.cost_weight * cost_term

    def actor(self) -> torch.Tensor | None:
        """The policy's action at least m_a (mean squared distance) away from the forget action."""
        cfg, batch = self.config, self.batch
        if batch is None or cfg.actor_weight == 0:
            return None
        actions = self.parts.policy_actions(batch.observations)
        distance = (actions - batch.actions).pow(2).mean(dim=-1)
        term = (self._gate() * soft_hinge(cfg.actor_margin - distance, cfg.temperature * cfg.actor_margin)).mean()
        self._record("forget_actor_hinge", term)
        self._record("forget_action_sq_distance", distance.mean())
        return cfg.actor_weight * term + self._state_repair(actions)

    def _state_repair(self, actions: torch.Tensor) -> torch.Tensor | float:
        """At the forget STATES, the policy's action should be good by the critics being repaired:
        reward value up (in reward units), cost value (the larger twin) below q* through a soft
        hinge. The learner's own actor loss only sees retained states, so without this term the
        action at states seen only in the forget set (a backdoor's trigger) is never steered;
        gradients reach the actor only (the critics' weights are not in this optimizer step)."""
        cfg, parts, batch = self.config, self.parts, self.batch
        if batch is None or cfg.state_repair_weight == 0 or not parts.has_critics:
            return 0.0
        assert parts.reward_members is not None and parts.cost_members is not None
        cost_unit = max(float(parts.q_threshold or 0.0), SCALE_FLOOR)
        q = parts.q_values(batch.observations, actions)
        q_reward = q[parts.reward_members].min(dim=0).values / self.reward_unit
        excess = (q[parts.cost_members].max(dim=0).values - cost_unit) / cost_unit
        term = (-q_reward + cfg.state_cost_penalty * soft_hinge(excess, cfg.temperature)).mean()
        self._record("forget_state_repair", term)
        return cfg.state_repair_weight * term

    def behaviour(self) -> torch.Tensor | None:
        """The behaviour model proposes forget actions no more readily than eps*: BCQ-Lag's z = 0
        action at least as far from them as its typical reconstruction error of retained actions;
        for CPQ their latent KL at least a high quantile of the retained one (out of distribution)."""
        cfg, batch = self.config, self.batch
        if batch is None or self.parts.behaviour is None or cfg.behaviour_weight == 0:
            return None
        eps = max(self.behaviour_threshold, SCALE_FLOOR)
        score, _ = self.parts.behaviour_scores(batch.observations, batch.actions)
        term = (self._gate() * soft_hinge(eps - score, cfg.temperature * eps)).mean()
        self._record("forget_behaviour_hinge", term)
        return cfg.behaviour_weight * term

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Add the terms to the learner's own optimizer steps while the block runs."""
        parts = self.parts
        with contextlib.ExitStack() as stack:
            if parts.behaviour is not None and parts.behaviour_optimizer is not None:
                stack.enter_context(extra_gradient(parts.behaviour_optimizer, list(parts.behaviour.parameters()),
                                                   self.behaviour))
            if parts.critics is not None and parts.critic_optimizer is not None:
                stack.enter_context(extra_gradient(parts.critic_optimizer, list(parts.critics.parameters()),
                                                   self.critics))
            stack.enter_context(extra_gradient(parts.actor_optimizer, list(parts.actor.parameters()), self.actor))
            yield


@torch.no_grad()
def behaviour_threshold(parts: ModelParts, retained: Batch, quantile: float) -> float:
    """eps*: the `quantile` of the behaviour model's reference score on retained transitions."""
    if parts.behaviour is None:
        return 0.0
    _, reference = parts.behaviour_scores(retained.observations, retained.actions)
    return float(torch.quantile(reference, quantile))


def run_safe_rule(session: Session) -> MethodOutcome:
    """Suppress, repair, choose a checkpoint offline. Updates `session.learner` in place; the outcome
    names the chosen update count (None when there is nothing to choose from: BC, or select_every 0)."""
    learner, cfg = session.learner, session.config.safe_rule
    parts = model_parts(learner)
    retained, forget = session.retained_sampler(), session.forget_sampler()
    total = session.config.steps
    repair_steps = int(round(cfg.repair_fraction * total))
    refit_steps = int(round(cfg.critic_refit_fraction * total))
    suppress_steps = total - repair_steps
    repairing_on_model = cfg.model_repair_steps > 0 and parts.has_critics
    # progress runs over the budget's updates and then the model repair's steps
    work = total + (cfg.model_value_rounds * cfg.model_repair_steps if repairing_on_model else 0)
    terms = ForgetTerms(parts, cfg, behaviour_threshold(parts, retained.sample(), cfg.behaviour_quantile))
    terms.start(forget.rows(torch.arange(forget.num_transitions)))
    generator = torch.Generator(device=learner.device)
    generator.manual_seed(session.config.seed + 1)
    if cfg.gate_covered_quantile > 0:
        terms.gate_covered(_retained_rows(session), cfg.gate_covered_quantile, generator=generator)
        assert terms.uncovered is not None
        session.history.append({"update": 0.0, "forget_uncovered_share": float(terms.uncovered.mean())})

    selecting = parts.has_critics and cfg.select_every > 0
    snapshots: list[tuple[int, dict[str, dict[str, torch.Tensor]]]] = []

    first_snapshot = suppress_steps if cfg.select_from == "repair" else refit_steps

    def maybe_snapshot(step: int) -> None:
        if selecting and step >= first_snapshot and (step == total or (step - first_snapshot) % cfg.select_every == 0):
            snapshots.append((step, network_state(learner)))

    learner.train_mode(True)
    if cfg.behaviour_refit_fraction > 0:
        _refit_behaviour(session, parts, int(round(cfg.behaviour_refit_fraction * total)), generator)
    if cfg.reset_critics != "none" and parts.has_critics:
        assert parts.cost_members is not None
        members = parts.cost_members if cfg.reset_critics == "cost" else slice(None)
        parts.reset_critic_members(members, generator)
    if cfg.reset_actor:
        parts.reset_actor_to_behaviour(generator)
    if cfg.return_fit_fraction > 0 and parts.has_critics:
        _fit_members_to_returns(session, parts, int(round(cfg.return_fit_fraction * total)), generator)
    with contextlib.ExitStack() as critics_held:
        if cfg.hold_critics and parts.critic_optimizer is not None:
            critics_held.enter_context(held_still(parts.critic_optimizer))
        # Refit: the critics (and the multiplier) learn the retained data's values of the current policy
        # before the actor moves on them; the forget terms wait for the actor.
        with held_still(parts.actor_optimizer):
            for step in range(1, refit_steps + 1):
                session.step_done("refit", step / work, learner.update(retained.sample()))
        with terms.attached():
            for step in range(refit_steps + 1, suppress_steps + 1):
                terms.draw(session.config.forget_batch_size, generator)
                terms.last = {}
                metrics = learner.update(retained.sample())
                session.step_done("suppress", step / work, {**metrics, **terms.last})
                maybe_snapshot(step)
        terms.batch = None
        for step in range(suppress_steps + 1, total + 1):
            session.step_done("repair", step / work, learner.update(retained.sample()))
            maybe_snapshot(step)
    session.flush("repair", total / work)
    simulator = _RetainedSimulator(session) if repairing_on_model or (
        selecting and cfg.select_by in ("model", "model_cost")) else None
    if repairing_on_model:
        assert simulator is not None
        for repair_round in range(cfg.model_value_rounds):
            if cfg.model_value_rows > 0:
                _refit_critics_on_model(session, parts, simulator, generator,
                                        (total + repair_round * cfg.model_repair_steps) / work)
            _repair_on_model(session, parts, simulator, snapshots if selecting else None,
                             first_label=total + repair_round * cfg.model_repair_steps, work=work)
    if not snapshots:
        return MethodOutcome()
    session.report_progress("select", 1.0)
    return MethodOutcome(selected_step=_choose_checkpoint(session, parts, snapshots, simulator))


def _retained_rows(session: Session) -> Batch:
    """Every retained transition as the learner trains on it (normalised observations, unit-box
    actions): the rows of the session's retained sampler, in the retained data's order."""
    sampler = session.retained_sampler()
    return sampler.rows(torch.arange(sampler.num_transitions))


def _refit_behaviour(session: Session, parts: ModelParts, steps: int, generator: torch.Generator) -> None:
    """The behaviour model re-drawn and fitted on the retained data, before the budget's learner
    updates; counted in the report's updates."""
    rows = _retained_rows(session)
    loss = parts.refit_behaviour(rows.observations, rows.actions, steps, session.config.batch_size, generator)
    session.updates += steps
    session.history.append({"update": float(session.updates), "behaviour_refit_steps": float(steps),
                            "behaviour_refit_loss": loss})
    session.report_progress("behaviour-refit", 0.0)
    session.check_stop("behaviour-refit")


def _fit_members_to_returns(session: Session, parts: ModelParts, steps: int, generator: torch.Generator) -> None:
    """The cost members (with `return_fit: all` the reward members too) regressed on the retained
    data's logged discounted returns-to-go (in the learner's scales), before the budget's learner
    updates; counted in the report's updates."""
    assert parts.gamma is not None and parts.cost_members is not None and parts.reward_members is not None
    learner, rows = session.learner, _retained_rows(session)
    data = learner.training_data(session.split.retained, learner.config)   # the sampler's rows, in its order

    def tensor(values: NDArray[Any]) -> torch.Tensor:
        return torch.from_numpy(values).float().to(rows.observations.device)

    targets = [(parts.cost_members, tensor(parts.cost_scale * data.discounted_costs_to_go(parts.gamma)))]
    if session.config.safe_rule.return_fit == "all":
        targets.append((parts.reward_members, tensor(parts.reward_scale * data.discounted_rewards_to_go(parts.gamma))))
    error = parts.fit_critic_members(rows.observations, rows.actions, targets, steps, session.config.batch_size,
                                     generator)
    session.updates += steps
    session.history.append({"update": float(session.updates), "return_fit_steps": float(steps),
                            "return_fit_mse": error})
    session.report_progress("return-fit", 0.0)
    session.check_stop("return-fit")


class _RetainedSimulator:
    """A dynamics model fitted on the retained data (`model_updates_per_step` updates per unlearning
    update) and the episodes the checkpoint choice simulates (`rollout_starts`: the task's episode
    length and start-state perturbation)."""

    def __init__(self, session: Session) -> None:
        cfg, learner, retained = session.config.safe_rule, session.learner, session.split.retained
        updates = max(1, int(round(cfg.model_updates_per_step * session.config.steps)))
        self.model: DynamicsEnsemble = fit_dynamics(retained, learner.info.stats, DynamicsSettings(updates=updates),
                                                    seed=session.config.seed, device=learner.device)
        self.starts = rollout_starts(retained, learner.info.stats, cfg.model_starts, session.config.seed,
                                     learner.device)

    def score(self, policy: ModelParts) -> tuple[float, float]:
        """The policy's mean simulated (reward, cost) return."""
        return rollout_returns(self.model, policy.policy_actions, self.starts)


def _refit_critics_on_model(session: Session, parts: ModelParts, simulator: _RetainedSimulator,
                            generator: torch.Generator, progress: float) -> None:
    """Every critic member regressed on the current policy's discounted returns simulated in the
    retained data's dynamics model from `model_value_rows` retained (state, action) rows: the critics
    then value the policy the actor has become, with labels that hold no poison, and the choice among
    the behaviour model's proposals follows them."""
    cfg, learner = session.config.safe_rule, session.learner
    assert parts.gamma is not None and parts.reward_members is not None and parts.cost_members is not None
    rows = _retained_rows(session)
    picks = torch.randperm(rows.size, generator=generator, device=rows.observations.device)[:cfg.model_value_rows]
    obs, actions = rows.observations.index_select(0, picks), rows.actions.index_select(0, picks)
    learner.train_mode(False)
    reward, cost = simulated_values(simulator.model, parts.policy_actions, obs, actions, cfg.model_value_horizon,
                                    parts.gamma)
    learner.train_mode(True)
    error = parts.fit_critic_members(obs, actions, [(parts.reward_members, parts.reward_scale * reward),
                                                    (parts.cost_members, parts.cost_scale * cost)],
                                     cfg.model_value_fit_steps, session.config.batch_size, generator)
    session.updates += cfg.model_value_fit_steps
    session.history.append({"update": float(session.updates), "model_value_mse": error,
                            "model_value_reward": float(reward.mean()), "model_value_cost": float(cost.mean())})
    session.report_progress("model-value-refit", progress)
    session.check_stop("model-value-refit")


def _repair_on_model(session: Session, parts: ModelParts, simulator: _RetainedSimulator,
                     snapshots: list[tuple[int, dict[str, dict[str, torch.Tensor]]]] | None, first_label: int,
                     work: int) -> None:
    """The actor improved on simulated episodes (unlearning/model_repair.py); a snapshot every
    `model_repair_snapshot_every` of its steps joins the checkpoint choice, labelled `first_label` +
    its step (the labels go on from the budget's last update, round after round); progress is that
    label over `work`, the budget's updates and every model-repair step."""
    cfg, learner = session.config.safe_rule, session.learner
    retained, stats = session.split.retained, learner.info.stats
    episode_len = simulator.starts.steps
    horizon = cfg.model_repair_horizon if 0 < cfg.model_repair_horizon < episode_len else episode_len
    settings = ModelRepairSettings(steps=cfg.model_repair_steps, learning_rate=cfg.model_repair_learning_rate,
                                   cost_target=cfg.model_repair_cost_target * float(learner.config.cost_limit)
                                   * horizon / episode_len,
                                   cost_penalty=cfg.model_repair_cost_penalty,
                                   pessimistic_cost=cfg.model_repair_pessimistic_cost)
    rows = _retained_rows(session).observations if horizon < episode_len else None
    generator = torch.Generator(device=learner.device).manual_seed(session.config.seed + 7919)

    def draw_starts(step: int) -> RolloutStarts:
        if rows is None:     # whole episodes from the retained episodes' start states
            return rollout_starts(retained, stats, cfg.model_repair_episodes, session.config.seed + 7919 * (step + 1),
                                  learner.device)
        picks = torch.randint(rows.shape[0], (cfg.model_repair_episodes,), generator=generator, device=rows.device)
        return RolloutStarts(rows.index_select(0, picks), horizon,
                             torch.zeros(0, cfg.model_repair_episodes, stats.act_dim, device=rows.device))

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if snapshots is not None and (step % cfg.model_repair_snapshot_every == 0 or step == settings.steps):
            snapshots.append((first_label + step, network_state(learner)))
        session.step_done("model-repair", (first_label + step) / work, {k: torch.tensor(v) for k, v in metrics.items()})

    repair_on_model(parts, simulator.model, draw_starts, settings, on_step)
    session.flush("model-repair", (first_label + settings.steps) / work)


def _choose_checkpoint(session: Session, parts: ModelParts,
                       snapshots: list[tuple[int, dict[str, dict[str, torch.Tensor]]]],
                       simulator: _RetainedSimulator | None) -> int:
    """Score every snapshot's policy on retained initial states: its cost value by the final critics
    (the ones trained longest on retained data, one yardstick for all), its reward by the final reward
    critics or, with select_by "model", by rollouts in a dynamics model of the retained data; with
    "model_cost" both reward and cost by those rollouts. Among those within the cost threshold (q*
    for a cost value, the learner's cost_limit for a simulated cost return), the highest reward; if
    none is within it, the lowest cost. Loads the chosen snapshot into the learner and returns its step."""
    cfg = session.config.safe_rule
    states = ScoringStates.of(session.learner, session.split, session.config.seed)
    candidate = clone_learner(session.learner)
    candidate_parts = model_parts(candidate)
    simulate = simulator.score if simulator is not None and cfg.select_by in ("model", "model_cost") else None
    cost_values, reward_values = [], []
    for _step, state in snapshots:
        load_network_state(candidate, state)
        score = offline_estimates(parts, states, policy=candidate_parts)
        simulated = simulate(candidate_parts) if simulate is not None else None
        reward_values.append(simulated[0] if simulated is not None else score["reward_value"])
        cost_values.append(simulated[1] if simulated is not None and cfg.select_by == "model_cost"
                           else score["cost_value"])
    cost, reward = np.array(cost_values), np.array(reward_values)
    threshold = (float(session.learner.config.cost_limit) if cfg.select_by == "model_cost"
                 else float(parts.q_threshold or 0.0))
    within = cost <= threshold
    best = int(np.flatnonzero(within)[np.argmax(reward[within])]) if within.any() else int(np.argmin(cost))
    step, state = snapshots[best]
    load_network_state(session.learner, state)
    session.history.append({"update": float(session.updates), "selected_step": float(step),
                            "selected_reward_value": float(reward[best]), "selected_cost_value": float(cost[best]),
                            "candidates": float(len(snapshots)), "candidates_within_threshold": float(within.sum())})
    return step
