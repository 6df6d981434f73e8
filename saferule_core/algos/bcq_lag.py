"""BCQ-Lag: batch-constrained Q-learning with a PID-Lagrangian cost penalty (as in OSRL's BCQL).

Networks (all on normalised observations and unit-box actions):
  * a conditional VAE p(a | s), the behaviour model;
  * a perturbation actor xi(s, a) that nudges behaviour actions by at most `phi`;
  * four critics in ONE ensemble: members 0, 1 are the twin reward critics, 2, 3 the twin cost
    critics; targets are slow copies of the critics and of the actor.

One update, in OSRL's order:
  1. VAE: reconstruction MSE + beta * KL on the batch.
  2. Critics: for each next state draw `num_sampled_actions` actions from the VAE and perturb them
     with the target actor. The SAME sampled actions serve the reward and the cost targets. Per
     twin pair: q = lmbda * min + (1 - lmbda) * max, then the max over the sampled actions;
     y_r = scaled reward + gamma * q_r', y_c = scaled cost + gamma * q_c'. Each member regresses
     its pair's target. Neither target bootstraps past a terminal; time-outs do bootstrap (OSRL
     stops the reward target at time-outs too and never stops the cost target).
  3. Actor: a = xi(s, VAE sample at s); loss = -Q_r + lambda * (Q_c - q_threshold) with
     Q_r, Q_c the min over each twin and lambda from the PID controller fed with mean Q_c.
     q_threshold = cost_limit * (1 - gamma^T) / (1 - gamma) / T, T the episode length.
  4. Soft target updates with rate tau.
The deployable policy is xi(s, decode(s, z = 0)): deterministic.

`action_selection = "constrained"` (not OSRL's) makes the critics value the policy that is deployed
and lets the cost critic steer it. The policy decodes `num_sampled_actions` candidates from fixed
latents, perturbs them and takes the one with the highest reward value among those whose cost
value is within q_threshold (the lowest cost value where none is). The critic targets pick the
next action among the sampled ones by the same rule with the target critics, instead of a max over
them. With OSRL's selection the actor can only move the behaviour model's z = 0 action by `phi`,
so on a dataset whose typical behaviour is over the budget the policy stays over it however large
lambda grows; the cost targets' max over samples also values the most costly sample, not the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from saferule_core.algos.base import Learner, Metrics, ModelInfo, frozen_copy, make_adam, per_step_cost_threshold
from saferule_core.algos.batch import Batch
from saferule_core.algos.configs import LearnerConfig
from saferule_core.algos.functional import ModelState, Params, bind, lerp_params
from saferule_core.algos.lagrangian import PIDGains, PIDLagrangian
from saferule_core.algos.networks import (
    BCQPolicyCore,
    BCQSelectingPolicyCore,
    ConditionalVAE,
    EnsembleCritic,
    PerturbationActor,
    constrained_choice_scores,
    fused_inference_available,
    vae_loss,
)
from saferule_core.errors import ConfigError

REWARD_MEMBERS = slice(0, 2)
COST_MEMBERS = slice(2, 4)
ACTION_SELECTIONS: tuple[str, ...] = ("osrl", "constrained")


@dataclass
class BCQLagConfig(LearnerConfig):
    """Defaults: OSRL's BCQL configuration (examples/configs/bcql_configs.py)."""

    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    vae_hidden: int = 400
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    vae_lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    phi: float = 0.05                 # max perturbation, in unit-box action units
    lmbda: float = 0.75               # weight of the min in the twin-critic target blend
    beta: float = 0.5                 # weight of the VAE's KL term
    num_sampled_actions: int = 10
    pid_kp: float = 0.1
    pid_ki: float = 0.003
    pid_kd: float = 0.001
    reward_scale: float = 0.1
    cost_scale: float = 1.0
    fused_targets: bool = True        # with bf16 on CPU: targets computed with activations fused into the matmuls
    action_selection: str = "osrl"    # "osrl" | "constrained" (see the module docstring)
    pessimistic_cost: bool = False    # cost twins: max (not min) in targets, actor and selection; targets >= 0
    selection_budget: float = 1.0     # constrained selection accepts cost values up to this fraction of q_threshold
    critic_layer_norm: bool = False   # layer norm before each hidden ReLU of the critics (not in OSRL)

    def validate(self) -> None:
        super().validate()
        if self.action_selection not in ACTION_SELECTIONS:
            raise ConfigError(f"action_selection must be one of {', '.join(ACTION_SELECTIONS)}, "
                              f"got {self.action_selection!r}")
        if not 0.0 < self.selection_budget <= 1.0:
            raise ConfigError(f"selection_budget must be in (0, 1], got {self.selection_budget}")
        if self.num_sampled_actions < 1:
            raise ConfigError(f"num_sampled_actions must be >= 1, got {self.num_sampled_actions}")


class BCQLag(Learner):
    config_class = BCQLagConfig
    config: BCQLagConfig
    stackable = True

    def __init__(self, config: BCQLagConfig, info: ModelInfo) -> None:
        super().__init__(config, info)
        obs_dim, act_dim, dev = info.obs_dim, info.act_dim, self.device
        self.vae = ConditionalVAE(obs_dim, act_dim, config.vae_hidden).to(dev)
        self.actor = PerturbationActor(obs_dim, act_dim, config.actor_hidden, config.phi).to(dev)
        self.critics = EnsembleCritic(obs_dim, act_dim, config.critic_hidden, members=4,
                                      layer_norm=config.critic_layer_norm).to(dev)
        self.actor_target = frozen_copy(self.actor)
        self.critics_target = frozen_copy(self.critics)
        self.q_threshold = per_step_cost_threshold(config.cost_limit * config.cost_scale, config.gamma,
                                                   config.episode_len)
        # the margin below q* keeps the choice away from candidates whose cost value is just under it,
        # where the choice favours the ones it underestimates
        self.selection_threshold = self.q_threshold * config.selection_budget
        self.lagrangian = PIDLagrangian(self.q_threshold, PIDGains(config.pid_kp, config.pid_ki, config.pid_kd)).to(dev)
        self.vae_optim = make_adam(self.vae.parameters(), config.vae_lr, config.optimizer)
        self.actor_optim = make_adam(self.actor.parameters(), config.actor_lr, config.optimizer)
        self.critic_optim = make_adam(self.critics.parameters(), config.critic_lr, config.optimizer)
        self._fused_targets = config.fused_targets and config.precision == "bf16" and not config.compile and \
            fused_inference_available(dev)
        self._vae_loss = self.maybe_compile(self._vae_loss_impl)
        self._critic_targets = self.maybe_compile(self._critic_targets_impl)
        self._critic_loss = self.maybe_compile(self._critic_loss_impl)
        self._actor_actions = self.maybe_compile(self._actor_actions_impl)
        self._actor_q = self.maybe_compile(self._actor_q_impl)

    @classmethod
    def algo_name(cls, config: LearnerConfig) -> str:
        return "bcq_lag"

    # ----- the phases of an update: pure functions of parameters and tensors (see algos.functional) ----
    def draw_noise(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The VAE's reparameterisation draw [B, latent] and the latents of the behaviour samples
        [B * k + B, latent] (k per next state for the targets, one per state for the actor)."""
        latent, samples = self.vae.latent_dim, self.config.num_sampled_actions
        like = torch.empty(0, device=self.device)
        return {"vae_eps": torch.randn(batch_size, latent, device=self.device, generator=generator),
                "latents": self.vae.sample_latent(batch_size * (samples + 1), like, generator)}

    def _vae_loss_impl(self, vae: Params, obs: torch.Tensor, act: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return vae_loss(cast(ConditionalVAE, bind(self.vae, vae)), obs, act, self.config.beta, eps)

    @torch.no_grad()
    def _critic_targets_impl(self, vae: Params, actor_target: Params, critics_target: Params, obs: torch.Tensor,
                             next_obs: torch.Tensor, rewards: torch.Tensor, costs: torch.Tensor,
                             terminals: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets [4, B] for the critic members and VAE-sampled behaviour actions at `obs` [B, act]."""
        cfg = self.config
        batch, samples = obs.shape[0], cfg.num_sampled_actions
        next_obs_rep = next_obs.repeat_interleave(samples, dim=0)             # [B*k, obs]
        # One decoder pass for the next-state samples and the actor's behaviour actions.
        decoder_input = torch.cat([next_obs_rep, obs], dim=0)
        if self._fused_targets:        # one model at a time (a stack runs this per model: no batching rule)
            decoded = bind(self.vae, vae, "fused_decode_sampled_bf16")(decoder_input, latents)
            next_actions = bind(self.actor_target, actor_target, "fused_forward_bf16")(next_obs_rep,
                                                                                      decoded[:batch * samples])
            q_next = bind(self.critics_target, critics_target, "fused_forward_bf16")(next_obs_rep, next_actions).float()
        else:
            with self.autocast():
                decoded = bind(self.vae, vae, "decode_sampled")(decoder_input, latents)
                next_actions = bind(self.actor_target, actor_target)(next_obs_rep, decoded[:batch * samples])
                q_next = bind(self.critics_target, critics_target)(next_obs_rep, next_actions).float()  # [4, B*k]
        pairs = q_next.view(2, 2, batch * samples)                              # (reward, cost) x twin
        low, high = pairs.min(dim=1).values, pairs.max(dim=1).values
        blended = cfg.lmbda * low + (1.0 - cfg.lmbda) * high
        if cfg.pessimistic_cost:       # the cautious side of a cost pair is its max; costs are never negative
            blended = torch.stack([blended[0], (cfg.lmbda * high[1] + (1.0 - cfg.lmbda) * low[1]).clamp(min=0.0)])
        blended = blended.view(2, batch, samples)
        if cfg.action_selection == "constrained":
            scores = constrained_choice_scores(blended[0], blended[1], self.selection_threshold)
            choice = scores.argmax(dim=1, keepdim=True)                          # [B, 1]
            best = torch.gather(blended, 2, choice.unsqueeze(0).expand(2, batch, 1)).squeeze(2)
        else:
            best = blended.max(dim=2).values                                    # [2, B]
        discount = cfg.gamma * (1.0 - terminals)
        reward_target = rewards * cfg.reward_scale + discount * best[0]
        cost_target = costs * cfg.cost_scale + discount * best[1]
        targets = torch.stack([reward_target, reward_target, cost_target, cost_target])
        return targets, decoded[batch * samples:].float()

    # These phases are written for a leading model axis (`state.run_batched`): [..., 4, B].
    def _critic_loss_impl(self, critics: Params, obs: torch.Tensor, act: torch.Tensor,
                          targets: torch.Tensor) -> torch.Tensor:
        """Per-member mean squared TD error, [..., 4]."""
        with self.autocast():
            q = bind(self.critics, critics)(obs, act)
        return (q.float() - targets).pow(2).mean(dim=-1)

    def _actor_actions_impl(self, actor: Params, obs: torch.Tensor, behaviour_actions: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return cast(torch.Tensor, bind(self.actor, actor)(obs, behaviour_actions))

    def _actor_q_impl(self, critics: Params, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of the actor's actions for all four critics, [..., 4, B]; gradients reach the actor only."""
        frozen = {name: p.detach() for name, p in critics.items()}
        with self.autocast():
            q = bind(self.critics, frozen)(obs, actions)
        return q.float()

    # ----- one update (one model, or K stacked: leading axes are written as `...`) --------------------
    def update_step(self, state: ModelState, batch: Batch, noise: dict[str, torch.Tensor]) -> Metrics:
        cfg, p = self.config, state.params
        obs = batch.observations

        loss_vae = state.run_batched(self._vae_loss, p["vae"], obs, batch.actions, noise["vae_eps"])
        state.step("vae", loss_vae)

        run_targets = state.run_each if self._fused_targets else state.run
        targets, behaviour_actions = run_targets(self._critic_targets, p["vae"], p["actor_target"], p["critics_target"],
                                               obs, batch.next_observations, batch.rewards, batch.costs,
                                               batch.terminals, noise["latents"])
        member_losses = state.run_batched(self._critic_loss, p["critics"], obs, batch.actions, targets)
        state.step("critics", member_losses)

        actions = state.run_batched(self._actor_actions, p["actor"], obs, behaviour_actions)
        q = state.run_batched(self._actor_q, p["critics"], obs, actions)   # [..., 4, B]
        q_reward = q[..., REWARD_MEMBERS, :].min(dim=-2).values
        q_costs = q[..., COST_MEMBERS, :]
        q_cost = q_costs.max(dim=-2).values if cfg.pessimistic_cost else q_costs.min(dim=-2).values
        multiplier = cast(PIDLagrangian, state.controllers["lagrangian"]).update(q_cost)
        cost_penalty = (multiplier.unsqueeze(-1) * (q_cost - self.q_threshold)).mean(dim=-1)
        loss_actor = -q_reward.mean(dim=-1) + cost_penalty
        state.step("actor", loss_actor)

        lerp_params(p["critics_target"], p["critics"], cfg.tau)
        lerp_params(p["actor_target"], p["actor"], cfg.tau)
        member_losses = member_losses.detach()
        return {
            "vae_loss": loss_vae.detach(),
            "reward_critic_loss": member_losses[..., REWARD_MEMBERS].sum(dim=-1),
            "cost_critic_loss": member_losses[..., COST_MEMBERS].sum(dim=-1),
            "actor_loss": loss_actor.detach(),
            "cost_penalty": cost_penalty.detach(),
            "q_reward": q_reward.detach().mean(dim=-1),
            "q_cost": q_cost.detach().mean(dim=-1),
            "lagrange_multiplier": multiplier,
        }

    # ----- what the base class saves and deploys ------------------------------------------------
    def policy_core(self) -> nn.Module:
        if self.config.action_selection == "constrained":
            return BCQSelectingPolicyCore(self.vae, self.actor, self.critics, REWARD_MEMBERS, COST_MEMBERS,
                                          self.selection_threshold, self.config.num_sampled_actions,
                                          pessimistic_cost=self.config.pessimistic_cost)
        return BCQPolicyCore(self.vae, self.actor)

    def networks(self) -> dict[str, nn.Module]:
        return {"vae": self.vae, "actor": self.actor, "critics": self.critics, "actor_target": self.actor_target,
                "critics_target": self.critics_target, "lagrangian": self.lagrangian}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": self.vae_optim, "actor": self.actor_optim, "critics": self.critic_optim}
