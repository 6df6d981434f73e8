"""CPQ: Constraints Penalized Q-learning (Xu et al. 2022), structured like OSRL's CPQ.

Networks (normalised observations, unit-box actions):
  * a squashed-Gaussian actor;
  * reward critics (members [0, num_reward_critics)) and cost critics (the next
    num_cost_critics members) in ONE ensemble, plus its slow target copy;
  * a conditional VAE of the behaviour policy, used only as an out-of-distribution detector.

One update:
  1. VAE: reconstruction MSE + beta * KL on the batch.
  2. Targets from the current actor's sampled next action a':
     y_c = scaled cost + gamma * Q_c'(s', a'),
     y_r = scaled reward + gamma * [Q_c'(s', a') <= q_threshold] * Q_r'(s', a')
     (the constraint-penalised Bellman operator: no reward is bootstrapped through an unsafe
     next action; Q' is the min over each critic group of the target ensemble; neither target
     bootstraps past a terminal).
  3. OOD penalty for the cost critics: draw `num_sampled_actions` squashed actions per state
     from the actor (OSRL feeds the pre-tanh samples); those whose VAE latent KL is in the top quarter
     (>= `ood_quantile`) count as out of distribution and their Q_c is pushed UP with weight alpha:
     loss = TD losses - alpha * (mean OOD Q_c - qc_threshold), qc_threshold = qc_scalar * q_threshold.
     alpha follows dual ascent alpha <- clip(alpha + alpha_lr * (qc_threshold - mean OOD Q_c), 0, alpha_max).
     (OSRL computes this term under no_grad, so it never reaches the critic; here it does, as in
     the CPQ paper.)
  4. Actor: maximise [Q_c(s, a) <= q_threshold] * Q_r(s, a) for a ~ pi(s).
  5. Soft target update of the critics.
The deployable policy is tanh(mu(s)): deterministic.
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
from saferule_core.algos.networks import ConditionalVAE, EnsembleCritic, SquashedGaussianActor, latent_kl, vae_loss
from saferule_core.errors import ConfigError


@dataclass
class CPQConfig(LearnerConfig):
    """Defaults: OSRL's CPQ configuration (examples/configs/cpq_configs.py)."""

    actor_hidden: tuple[int, ...] = (300, 300)
    critic_hidden: tuple[int, ...] = (400, 400)
    vae_hidden: int = 400
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    alpha_lr: float = 1e-3
    vae_lr: float = 1e-3
    alpha_max: float = 1.0
    gamma: float = 0.99
    tau: float = 0.005
    beta: float = 0.5
    num_reward_critics: int = 2
    num_cost_critics: int = 2
    num_sampled_actions: int = 10
    qc_scalar: float = 1.5
    ood_quantile: float = 0.75
    reward_scale: float = 0.1
    cost_scale: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.num_reward_critics < 1 or self.num_cost_critics < 1:
            raise ConfigError("CPQ needs at least one reward critic and one cost critic")
        if not 0.0 < self.ood_quantile < 1.0:
            raise ConfigError(f"ood_quantile must be in (0, 1), got {self.ood_quantile}")


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(values, q) (linear interpolation) for a 1-d tensor, from a sort: vmap has a
    batching rule for sort and none for quantile."""
    ordered = values.sort().values
    position = q * (values.shape[0] - 1)
    low = int(position)
    high = min(low + 1, values.shape[0] - 1)
    return torch.lerp(ordered[low], ordered[high], position - low)


class DualVariable(nn.Module):
    """A scalar multiplier kept in [0, max] by projected dual ascent; saved with the model."""

    value: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(()))

    @torch.no_grad()
    def ascend(self, violation: torch.Tensor, lr: float, maximum: float) -> torch.Tensor:
        self.value.copy_((self.value + lr * violation.detach()).clamp(0.0, maximum))
        return self.value.clone()


class CPQ(Learner):
    config_class = CPQConfig
    config: CPQConfig
    stackable = True

    def __init__(self, config: CPQConfig, info: ModelInfo) -> None:
        super().__init__(config, info)
        obs_dim, act_dim, dev = info.obs_dim, info.act_dim, self.device
        members = config.num_reward_critics + config.num_cost_critics
        self.reward_members = slice(0, config.num_reward_critics)
        self.cost_members = slice(config.num_reward_critics, members)
        self.actor = SquashedGaussianActor(obs_dim, act_dim, config.actor_hidden).to(dev)
        self.critics = EnsembleCritic(obs_dim, act_dim, config.critic_hidden, members).to(dev)
        self.critics_target = frozen_copy(self.critics)
        self.vae = ConditionalVAE(obs_dim, act_dim, config.vae_hidden).to(dev)
        self.alpha = DualVariable().to(dev)
        self.q_threshold = per_step_cost_threshold(config.cost_limit * config.cost_scale, config.gamma,
                                                   config.episode_len)
        self.qc_threshold = config.qc_scalar * self.q_threshold
        self.actor_optim = make_adam(self.actor.parameters(), config.actor_lr, config.optimizer)
        self.critic_optim = make_adam(self.critics.parameters(), config.critic_lr, config.optimizer)
        self.vae_optim = make_adam(self.vae.parameters(), config.vae_lr, config.optimizer)
        self._vae_loss = self.maybe_compile(self._vae_loss_impl)
        self._targets = self.maybe_compile(self._targets_impl)
        self._critic_losses = self.maybe_compile(self._critic_losses_impl)
        self._actor_loss = self.maybe_compile(self._actor_loss_impl)

    @classmethod
    def algo_name(cls, config: LearnerConfig) -> str:
        return "cpq"

    # ----- the phases of an update: pure functions of parameters and tensors (see algos.functional) ----
    def draw_noise(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The VAE's reparameterisation draw [B, latent] and the actor's Gaussian draws: one per next
        state [B, act] (targets), num_sampled_actions per state [k, B, act] (OOD penalty), one per
        state [B, act] (actor loss)."""
        act, samples = self.info.act_dim, self.config.num_sampled_actions

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=self.device, generator=generator)

        return {"vae_eps": normal(batch_size, self.vae.latent_dim), "next_eps": normal(batch_size, act),
                "ood_eps": normal(samples, batch_size, act), "actor_eps": normal(batch_size, act)}

    def _vae_loss_impl(self, vae: Params, obs: torch.Tensor, act: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return vae_loss(cast(ConditionalVAE, bind(self.vae, vae)), obs, act, self.config.beta, eps)

    @torch.no_grad()
    def _targets_impl(self, actor: Params, critics_target: Params, vae: Params, obs: torch.Tensor,
                      next_obs: torch.Tensor, rewards: torch.Tensor, costs: torch.Tensor, terminals: torch.Tensor,
                      next_eps: torch.Tensor, ood_eps: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """TD targets [members, B]; OOD candidate (obs, actions) [k*B, .]; their OOD mask [k, B]."""
        cfg = self.config
        batch, samples = obs.shape[0], cfg.num_sampled_actions
        sample = bind(self.actor, actor, "sample")
        with self.autocast():
            next_actions = sample(next_obs, None, next_eps)
            q_next = bind(self.critics_target, critics_target)(next_obs, next_actions).float()
            sampled_actions = sample(obs, samples, ood_eps).reshape(samples * batch, -1).float()
            stacked_obs = obs.unsqueeze(0).expand(samples, -1, -1).reshape(samples * batch, -1)
            latent_mean, latent_std = bind(self.vae, vae, "encode")(stacked_obs, sampled_actions)
        q_reward_next = q_next[self.reward_members].min(dim=0).values
        q_cost_next = q_next[self.cost_members].min(dim=0).values
        discount = cfg.gamma * (1.0 - terminals)
        safe_next = (q_cost_next <= self.q_threshold).float()
        reward_target = rewards * cfg.reward_scale + discount * safe_next * q_reward_next
        cost_target = costs * cfg.cost_scale + discount * q_cost_next
        targets = torch.cat([reward_target.expand(cfg.num_reward_critics, -1),
                             cost_target.expand(cfg.num_cost_critics, -1)])
        kl = latent_kl(latent_mean.float(), latent_std.float()).view(samples, batch)
        ood_mask = (kl >= _quantile(kl.flatten(), cfg.ood_quantile)).float()
        return targets, stacked_obs, sampled_actions, ood_mask

    def _critic_losses_impl(self, critics: Params, obs: torch.Tensor, act: torch.Tensor, targets: torch.Tensor,
                            ood_obs: torch.Tensor, ood_actions: torch.Tensor,
                            ood_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member TD losses [members] and the mean OOD cost-Q (0-dim, with gradient)."""
        samples, batch = ood_mask.shape
        critic = bind(self.critics, critics)
        with self.autocast():
            q = critic(obs, act)
            q_ood = critic(ood_obs, ood_actions, self.cost_members)
        td = (q.float() - targets).pow(2).mean(dim=1)
        q_ood = q_ood.float().view(-1, samples, batch)
        return td, (ood_mask * q_ood).mean(dim=1).mean()

    def _actor_loss_impl(self, actor: Params, critics: Params, obs: torch.Tensor,
                         eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients reach the actor only."""
        frozen = {name: p.detach() for name, p in critics.items()}
        with self.autocast():
            actions = bind(self.actor, actor, "sample")(obs, None, eps)
            q = bind(self.critics, frozen)(obs, actions).float()
        q_reward = q[self.reward_members].min(dim=0).values
        q_cost = q[self.cost_members].min(dim=0).values
        loss = -((q_cost <= self.q_threshold).float() * q_reward).mean()
        return loss, q_reward.detach().mean(), q_cost.detach().mean()

    # ----- one update (one model, or K stacked: `state.run` maps every phase over the model axis) -----
    def update_step(self, state: ModelState, batch: Batch, noise: dict[str, torch.Tensor]) -> Metrics:
        cfg, p = self.config, state.params
        obs = batch.observations

        loss_vae = state.run(self._vae_loss, p["vae"], obs, batch.actions, noise["vae_eps"])
        state.step("vae", loss_vae)

        targets, ood_obs, ood_actions, ood_mask = state.run(
            self._targets, p["actor"], p["critics_target"], p["vae"], obs, batch.next_observations, batch.rewards,
            batch.costs, batch.terminals, noise["next_eps"], noise["ood_eps"])
        td, ood_q_cost = state.run(self._critic_losses, p["critics"], obs, batch.actions, targets, ood_obs,
                                   ood_actions, ood_mask)
        alpha = cast(DualVariable, state.controllers["alpha"]).ascend(self.qc_threshold - ood_q_cost.detach(),
                                                                       cfg.alpha_lr, cfg.alpha_max)
        state.step("critics", td.sum(dim=-1) - alpha * (ood_q_cost - self.qc_threshold))

        loss_actor, q_reward, q_cost = state.run(self._actor_loss, p["actor"], p["critics"], obs, noise["actor_eps"])
        state.step("actor", loss_actor)

        lerp_params(p["critics_target"], p["critics"], cfg.tau)
        td = td.detach()
        return {
            "vae_loss": loss_vae.detach(),
            "reward_critic_loss": td[..., self.reward_members].sum(dim=-1),
            "cost_critic_loss": td[..., self.cost_members].sum(dim=-1),
            "ood_q_cost": ood_q_cost.detach(),
            "alpha": alpha,
            "actor_loss": loss_actor.detach(),
            "q_reward": q_reward,
            "q_cost": q_cost,
        }

    # ----- what the base class saves and deploys ------------------------------------------------
    def policy_core(self) -> nn.Module:
        return self.actor

    def networks(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critics": self.critics, "critics_target": self.critics_target,
                "vae": self.vae, "alpha": self.alpha}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optim, "critics": self.critic_optim, "vae": self.vae_optim}
