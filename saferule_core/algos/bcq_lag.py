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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from saferule_core.algos.base import (
    Learner,
    LearnerConfig,
    Metrics,
    ModelInfo,
    frozen_copy,
    make_adam,
    per_step_cost_threshold,
    soft_update,
)
from saferule_core.algos.batch import Batch
from saferule_core.algos.lagrangian import PIDGains, PIDLagrangian
from saferule_core.algos.networks import (
    BCQPolicyCore,
    ConditionalVAE,
    EnsembleCritic,
    PerturbationActor,
    fused_inference_available,
    vae_loss,
)

REWARD_MEMBERS = slice(0, 2)
COST_MEMBERS = slice(2, 4)


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


class BCQLag(Learner):
    config_class = BCQLagConfig
    config: BCQLagConfig

    def __init__(self, config: BCQLagConfig, info: ModelInfo) -> None:
        super().__init__(config, info)
        obs_dim, act_dim, dev = info.obs_dim, info.act_dim, self.device
        self.vae = ConditionalVAE(obs_dim, act_dim, config.vae_hidden).to(dev)
        self.actor = PerturbationActor(obs_dim, act_dim, config.actor_hidden, config.phi).to(dev)
        self.critics = EnsembleCritic(obs_dim, act_dim, config.critic_hidden, members=4).to(dev)
        self.actor_target = frozen_copy(self.actor)
        self.critics_target = frozen_copy(self.critics)
        self.q_threshold = per_step_cost_threshold(config.cost_limit * config.cost_scale, config.gamma,
                                                   config.episode_len)
        self.lagrangian = PIDLagrangian(self.q_threshold, PIDGains(config.pid_kp, config.pid_ki, config.pid_kd)).to(dev)
        self.vae_optim = make_adam(self.vae.parameters(), config.vae_lr, config.optimizer)
        self.actor_optim = make_adam(self.actor.parameters(), config.actor_lr, config.optimizer)
        self.critic_optim = make_adam(self.critics.parameters(), config.critic_lr, config.optimizer)
        # Detached views of the critic weights (same storage, so they follow every update): the
        # actor step differentiates through the critics' inputs only, never into their weights.
        self._frozen_critic_params = {name: p.detach() for name, p in self.critics.named_parameters()}
        self._fused_targets = config.fused_targets and config.precision == "bf16" and not config.compile and \
            fused_inference_available(dev)
        self._vae_loss = self.maybe_compile(self._vae_loss_impl)
        self._critic_targets = self.maybe_compile(self._critic_targets_impl)
        self._critic_loss = self.maybe_compile(self._critic_loss_impl)
        self._actor_q = self.maybe_compile(self._actor_q_impl)

    @classmethod
    def algo_name(cls, config: LearnerConfig) -> str:
        return "bcq_lag"

    # ----- the four phases of an update (pure tensor functions, compiled when asked) ---------
    def _vae_loss_impl(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return vae_loss(self.vae, obs, act, self.config.beta)

    @torch.no_grad()
    def _critic_targets_impl(self, obs: torch.Tensor, next_obs: torch.Tensor, rewards: torch.Tensor,
                             costs: torch.Tensor, terminals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets [4, B] for the critic members and VAE-sampled behaviour actions at `obs` [B, act]."""
        cfg = self.config
        batch, samples = obs.shape[0], cfg.num_sampled_actions
        next_obs_rep = next_obs.repeat_interleave(samples, dim=0)             # [B*k, obs]
        if self._fused_targets:
            decoded = self.vae.fused_decode_sampled_bf16(torch.cat([next_obs_rep, obs], dim=0))
            next_actions = self.actor_target.fused_forward_bf16(next_obs_rep, decoded[:batch * samples])
            q_next = self.critics_target.fused_forward_bf16(next_obs_rep, next_actions).float()
        else:
            with self.autocast():
                # One decoder pass for the next-state samples and the actor's behaviour actions.
                decoded = self.vae.decode_sampled(torch.cat([next_obs_rep, obs], dim=0))
                next_actions = self.actor_target(next_obs_rep, decoded[:batch * samples])
                q_next = self.critics_target(next_obs_rep, next_actions).float()  # [4, B*k]
        pairs = q_next.view(2, 2, batch * samples)                              # (reward, cost) x twin
        blended = cfg.lmbda * pairs.min(dim=1).values + (1.0 - cfg.lmbda) * pairs.max(dim=1).values
        best = blended.view(2, batch, samples).max(dim=2).values                # [2, B]
        discount = cfg.gamma * (1.0 - terminals)
        reward_target = rewards * cfg.reward_scale + discount * best[0]
        cost_target = costs * cfg.cost_scale + discount * best[1]
        targets = torch.stack([reward_target, reward_target, cost_target, cost_target])
        return targets, decoded[batch * samples:].float()

    def _critic_loss_impl(self, obs: torch.Tensor, act: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-member mean squared TD error, [4]."""
        with self.autocast():
            q = self.critics(obs, act)
        return (q.float() - targets).pow(2).mean(dim=1)

    def _actor_q_impl(self, obs: torch.Tensor, behaviour_actions: torch.Tensor) -> torch.Tensor:
        """Q of the actor's actions for all four critics, [4, B]; gradients reach the actor only."""
        with self.autocast():
            actions = self.actor(obs, behaviour_actions)
            q = functional_call(self.critics, self._frozen_critic_params, (obs, actions))
        return q.float()

    # ----- one update ---------------------------------------------------------------------------
    def update(self, batch: Batch) -> Metrics:
        cfg = self.config
        obs = batch.observations

        loss_vae = self._vae_loss(obs, batch.actions)
        self.vae_optim.zero_grad(set_to_none=True)
        loss_vae.backward()
        self.vae_optim.step()

        targets, behaviour_actions = self._critic_targets(obs, batch.next_observations, batch.rewards,
                                                          batch.costs, batch.terminals)
        member_losses = self._critic_loss(obs, batch.actions, targets)
        self.critic_optim.zero_grad(set_to_none=True)
        member_losses.sum().backward()
        self.critic_optim.step()

        q = self._actor_q(obs, behaviour_actions)
        q_reward = q[REWARD_MEMBERS].min(dim=0).values
        q_cost = q[COST_MEMBERS].min(dim=0).values
        multiplier = self.lagrangian.update(q_cost)
        cost_penalty = (multiplier * (q_cost - self.q_threshold)).mean()
        loss_actor = -q_reward.mean() + cost_penalty
        self.actor_optim.zero_grad(set_to_none=True)
        loss_actor.backward()
        self.actor_optim.step()

        soft_update(self.critics_target, self.critics, cfg.tau)
        soft_update(self.actor_target, self.actor, cfg.tau)
        self.num_updates += 1
        member_losses = member_losses.detach()
        return {
            "vae_loss": loss_vae.detach(),
            "reward_critic_loss": member_losses[REWARD_MEMBERS].sum(),
            "cost_critic_loss": member_losses[COST_MEMBERS].sum(),
            "actor_loss": loss_actor.detach(),
            "cost_penalty": cost_penalty.detach(),
            "q_reward": q_reward.detach().mean(),
            "q_cost": q_cost.detach().mean(),
            "lagrange_multiplier": multiplier,
        }

    # ----- what the base class saves and deploys ------------------------------------------------
    def policy_core(self) -> nn.Module:
        return BCQPolicyCore(self.vae, self.actor)

    def networks(self) -> dict[str, nn.Module]:
        return {"vae": self.vae, "actor": self.actor, "critics": self.critics, "actor_target": self.actor_target,
                "critics_target": self.critics_target, "lagrangian": self.lagrangian}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": self.vae_optim, "actor": self.actor_optim, "critics": self.critic_optim}
