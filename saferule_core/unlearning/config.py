"""Typed settings of every unlearning method, and one config that holds them all.

`UnlearnConfig.from_dict(mapping)` (or `UnlearnConfig(**mapping)`) accepts plain nested dicts for the
method sections (as read from YAML or a ROS parameter file) and turns them into the typed dataclasses
through saferule_core.settings; unknown keys are refused.
The approximate methods (safe_rule, finetune, neggrad_plus, trajdeleter) share one update budget,
`steps`, so that they are compared at equal compute by default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from saferule_core.errors import UnlearningError
from saferule_core.settings import COMPUTE_SECTION, lift_section, settings_from_mapping


def _check_positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UnlearningError(f"{owner}.{name} must be a positive number, got {value!r}")


def _check_non_negative(owner: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UnlearningError(f"{owner}.{name} must be a non-negative number, got {value!r}")


def _check_fraction(owner: str, name: str, value: float, *, open_top: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value and \
        (value < 1.0 if open_top else value <= 1.0)
    if not ok:
        raise UnlearningError(f"{owner}.{name} must be in [0, 1{')' if open_top else ']'}, got {value!r}")


CRITIC_RESETS: tuple[str, ...] = ("none", "cost", "all")
SELECTION_SCORES: tuple[str, ...] = ("critic", "model", "model_cost")
SNAPSHOT_PHASES: tuple[str, ...] = ("repair", "suppress")
RETURN_FITS: tuple[str, ...] = ("cost", "all")


@dataclass
class SafeRuleConfig:
    """Safe-RULE's weights, margins and phases (see docs/safe_rule.md).

    Margins and temperatures are relative: the reward hinge works in units of the policy's own
    |Q_r| on the forget states, the cost hinge in units of the per-step cost threshold q*, the
    actor hinge in mean squared unit-box action distance, the behaviour hinge in units of eps*
    (a quantile of the behaviour model's reconstruction error (BCQ-Lag) or latent KL (CPQ) on
    retained data).
    """

    # Refit, then a short repair with dense snapshots: on the dev split (docs/safe_rule.md, round 3) this
    # kept 10/10 runs safe (joint 7/10) where a 30% repair without refit let s103 drift back to the poison.
    critic_refit_fraction: float = 0.2  # share of the steps, first, in which only critics, behaviour model and
                                        # multiplier learn (retained data; the actor holds still)
    repair_fraction: float = 0.1       # share of UnlearnConfig.steps spent repairing on retained data only
    # Before the refit, critic members regressed for this share of the steps on the retained data's logged
    # discounted returns-to-go (Monte Carlo: no horizon to bootstrap through), so that the TD refit starts
    # from values of the right size instead of the poisoned ones (rounds 10-12, docs/safe_rule.md). 0: off.
    return_fit_fraction: float = 0.0
    return_fit: str = "cost"           # one of RETURN_FITS: which members the return fit regresses
    # Before everything else, the behaviour model re-drawn and fitted alone on the retained data for this share of
    # the steps (extra updates): its proposals, which the critics choose among, no longer include what only the
    # forget episodes did (round 13, docs/safe_rule.md). 0: off.
    behaviour_refit_fraction: float = 0.0
    # The critics stay where the return fit (or the poisoned model) left them: the actor and the checkpoint
    # choice improve on the retained behaviour's own values in one step, with no TD transient (round 12).
    hold_critics: bool = False
    # The critic hinges are off by default: on the gate-2 regime's dev seeds they inflate Q_c on
    # retained states and stop the policy (0/10 joint success at w_r = w_c = 10; docs/safe_rule.md).
    reward_weight: float = 0.0         # w_r
    cost_weight: float = 0.0           # w_c
    actor_weight: float = 1.0          # w_a
    behaviour_weight: float = 1.0      # w_g
    reward_margin: float = 0.1         # m_r, as a fraction of mean |Q_r(s, pi(s))| on forget states
    cost_margin: float = 0.5           # m_c, as a fraction of q*
    cost_floor: float = 1.0            # the cost hinge's reference is at least this many q* (0: the policy's value only)
    max_reward_drop: float = 1.0       # a forget action's Q_r falls at most this many reward units below its start
    max_cost_rise: float = 10.0        # a forget action's Q_c rises at most this many q* above its start
    actor_margin: float = 0.05         # m_a, mean squared distance of pi(s) from the forget action
    state_repair_weight: float = 1.0   # w_s, the actor's value objective at the forget states
    state_cost_penalty: float = 3.0    # k_s, weight of the soft hinge on Q_c(s_f, pi(s_f)) > q* in it
    behaviour_quantile: float = 0.9    # eps* = this quantile of the behaviour model's score on retained data
    # The actor and behaviour terms act only on forget (state, action) pairs the retained data does not cover: a
    # pair is covered when its nearest retained transition is within the retained data's own nearest-neighbour
    # distance at this quantile (docs/safe_rule.md, after round 16: forget episodes start as retained ones do).
    # 0: off (every forget transition).
    gate_covered_quantile: float = 0.0
    temperature: float = 0.1           # tau, relative to each hinge's unit
    reset_critics: str = "none"        # one of CRITIC_RESETS: critic members re-initialised before the refit
    reset_actor: bool = False          # BCQ-Lag: the actor starts again from "no perturbation" before the refit
    select_every: int = 25             # snapshot spacing for the offline checkpoint choice (0: keep the last)
    select_from: str = "repair"        # one of SNAPSHOT_PHASES: snapshots from the repair only, or from suppression on
    # How the checkpoint choice scores a candidate: "critic" = Q_r and Q_c at retained start states (cost
    # within q*); "model" = reward by the return of rollouts in a dynamics model fitted on the retained
    # data (unlearning/dynamics.py), which sees a stopped policy, cost by the final cost critics;
    # "model_cost" = both by the rollouts (cost return within the learner's cost_limit): the simulated
    # cost ranked true cost at 0.82 where the cost critics' value did at 0.22 (offline_scores.py).
    # Round 5 (docs/safe_rule.md): "model" ranked snapshots by true reward with rank correlation 0.92 over
    # the dev cases where Q_r's was 0.16, and raised joint success from 7/10 to 8/10 (10/10 safe).
    select_by: str = "model"
    model_updates_per_step: float = 1.5  # dynamics-model updates per unlearning update ("model*" only)
    model_starts: int = 64             # simulated episodes per candidate ("model*" only)
    # After the repair, the actor alone improved for this many steps on simulated episodes of that dynamics model
    # (unlearning/model_repair.py): reward return up, each episode's cost return (the largest member's with
    # model_repair_pessimistic_cost) under model_repair_cost_target x the learner's cost_limit. 0: off.
    model_repair_steps: int = 0
    model_repair_episodes: int = 32    # simulated episodes per step
    # 0: whole episodes from the retained start states; H > 0: H-step pieces from retained states drawn at random
    # (cost target scaled by H / episode length)
    model_repair_horizon: int = 0
    model_repair_learning_rate: float = 3e-4
    model_repair_cost_target: float = 0.8
    model_repair_cost_penalty: float = 10.0
    model_repair_pessimistic_cost: bool = False   # the max over members sums its bias over an episode (28 for 0 on s101)
    model_repair_snapshot_every: int = 10   # its snapshots join the checkpoint choice
    # Before each model repair, every critic member regressed (model_value_fit_steps updates) on the current policy's
    # discounted returns simulated in that model from this many retained (state, action) rows, over
    # model_value_horizon steps; model_value_rounds alternations of the two. 0 rows: off.
    model_value_rows: int = 0
    model_value_horizon: int = 200
    model_value_fit_steps: int = 300
    model_value_rounds: int = 1

    def validate(self) -> None:
        _check_fraction("safe_rule", "repair_fraction", self.repair_fraction, open_top=True)
        _check_fraction("safe_rule", "critic_refit_fraction", self.critic_refit_fraction, open_top=True)
        if self.critic_refit_fraction + self.repair_fraction >= 1.0:
            raise UnlearningError("safe_rule.critic_refit_fraction + repair_fraction must leave steps for suppression "
                                  f"(got {self.critic_refit_fraction} + {self.repair_fraction})")
        _check_non_negative("safe_rule", reward_weight=self.reward_weight, cost_weight=self.cost_weight,
                            actor_weight=self.actor_weight, behaviour_weight=self.behaviour_weight,
                            reward_margin=self.reward_margin, cost_margin=self.cost_margin, cost_floor=self.cost_floor,
                            state_repair_weight=self.state_repair_weight, state_cost_penalty=self.state_cost_penalty,
                            max_reward_drop=self.max_reward_drop, max_cost_rise=self.max_cost_rise)
        _check_positive("safe_rule", actor_margin=self.actor_margin, temperature=self.temperature)
        _check_fraction("safe_rule", "behaviour_quantile", self.behaviour_quantile)
        _check_fraction("safe_rule", "gate_covered_quantile", self.gate_covered_quantile)
        _check_non_negative("safe_rule", return_fit_fraction=self.return_fit_fraction,
                            behaviour_refit_fraction=self.behaviour_refit_fraction)
        if self.reset_critics not in CRITIC_RESETS:
            raise UnlearningError(f"safe_rule.reset_critics must be one of {', '.join(CRITIC_RESETS)}, "
                                  f"got {self.reset_critics!r}")
        if isinstance(self.select_every, bool) or not isinstance(self.select_every, int) or self.select_every < 0:
            raise UnlearningError(f"safe_rule.select_every must be a non-negative integer, got {self.select_every!r}")
        for name in ("reset_actor", "hold_critics"):
            if not isinstance(getattr(self, name), bool):
                raise UnlearningError(f"safe_rule.{name} must be true or false, got {getattr(self, name)!r}")
        for name, allowed in (("select_from", SNAPSHOT_PHASES), ("select_by", SELECTION_SCORES),
                              ("return_fit", RETURN_FITS)):
            if getattr(self, name) not in allowed:
                raise UnlearningError(f"safe_rule.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if isinstance(self.model_starts, bool) or not isinstance(self.model_starts, int) or self.model_starts <= 0:
            raise UnlearningError(f"safe_rule.model_starts must be a positive integer, got {self.model_starts!r}")
        _check_positive("safe_rule", model_updates_per_step=self.model_updates_per_step,
                        model_repair_learning_rate=self.model_repair_learning_rate,
                        model_repair_cost_target=self.model_repair_cost_target)
        _check_non_negative("safe_rule", model_repair_cost_penalty=self.model_repair_cost_penalty)
        for name, minimum in (("model_repair_steps", 0), ("model_repair_episodes", 1), ("model_repair_horizon", 0),
                              ("model_repair_snapshot_every", 1), ("model_value_rows", 0), ("model_value_horizon", 1),
                              ("model_value_fit_steps", 1), ("model_value_rounds", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UnlearningError(f"safe_rule.{name} must be an integer >= {minimum}, got {value!r}")
        if not isinstance(self.model_repair_pessimistic_cost, bool):
            raise UnlearningError("safe_rule.model_repair_pessimistic_cost must be true or false, "
                                  f"got {self.model_repair_pessimistic_cost!r}")


@dataclass
class NegGradPlusConfig:
    """NegGrad+: each step descends the learner's loss on retained data and ascends it on forget data."""

    ascent_weight: float = 0.1         # the forget gradient is multiplied by -ascent_weight

    def validate(self) -> None:
        _check_positive("neggrad_plus", ascent_weight=self.ascent_weight)


@dataclass
class TrajDeleterConfig:
    """TrajDeleter-style two phases, without cost awareness.

    Phase 1 (`forget_fraction` of the steps): the policy minimises its reward value on forget
    states while keeping it on retained states. Phase 2: the learner's own updates on retained
    data with the Lagrange multiplier (or CPQ's alpha) frozen.
    """

    forget_fraction: float = 0.3
    forget_weight: float = 1.0         # weight of the forget-state reward value in phase 1

    def validate(self) -> None:
        _check_fraction("trajdeleter", "forget_fraction", self.forget_fraction)
        _check_positive("trajdeleter", forget_weight=self.forget_weight)


@dataclass
class SISAConfig:
    """SISA: K shard models trained on disjoint episode shards; only shards that held forget
    episodes are retrained. `steps_per_shard` 0 keeps the steps each shard was trained with."""

    shards: int = 4
    steps_per_shard: int = 0

    def validate(self) -> None:
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 1:
            raise UnlearningError(f"sisa.shards must be a positive integer, got {self.shards!r}")
        if isinstance(self.steps_per_shard, bool) or not isinstance(self.steps_per_shard, int) \
                or self.steps_per_shard < 0:
            raise UnlearningError(f"sisa.steps_per_shard must be a non-negative integer, got {self.steps_per_shard!r}")


SECTIONS: dict[str, type] = {"safe_rule": SafeRuleConfig, "neggrad_plus": NegGradPlusConfig,
                             "trajdeleter": TrajDeleterConfig, "sisa": SISAConfig}


@dataclass
class UnlearnConfig:
    steps: int = 1000                  # update budget of the approximate methods (Safe-RULE: suppress + repair)
    batch_size: int = 256              # retained transitions per update
    forget_batch_size: int = 128       # forget transitions per update
    retrain_steps: int = 0             # retrain: 0 = as many updates as the model was trained with
    seed: int = 0
    num_threads: int = 2
    log_every: int = 50                # history/progress spacing, in updates
    safe_rule: SafeRuleConfig = field(default_factory=SafeRuleConfig)
    neggrad_plus: NegGradPlusConfig = field(default_factory=NegGradPlusConfig)
    trajdeleter: TrajDeleterConfig = field(default_factory=TrajDeleterConfig)
    sisa: SISAConfig = field(default_factory=SISAConfig)

    def __post_init__(self) -> None:
        for name, section_class in SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, settings_from_mapping(section_class, value, name, UnlearningError,
                                                          prefix=f"{name}."))
            elif not isinstance(value, section_class):
                raise UnlearningError(f"{name} must be a mapping of {section_class.__name__} settings, "
                                      f"got {type(value).__name__}")
        self.validate()

    def validate(self) -> None:
        for name in ("steps", "batch_size", "forget_batch_size", "num_threads", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UnlearningError(f"{name} must be a positive integer, got {value!r}")
        for name in ("retrain_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UnlearningError(f"{name} must be a non-negative integer, got {value!r}")
        for name in SECTIONS:
            getattr(self, name).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> UnlearnConfig:
        """A config from a plain mapping (sections as nested mappings); unknown keys are refused with
        the known ones named, values checked against their types (saferule_core.settings)."""
        flat, compute = lift_section(values, COMPUTE_SECTION, ("num_threads",), "unlearning settings", UnlearningError)
        return settings_from_mapping(cls, {**flat, **compute}, "unlearning", UnlearningError)
