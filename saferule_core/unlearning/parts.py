"""What unlearning reaches into a learner for, in one place: its policy, critics, behaviour model
and optimizers, plus generic tools (copying a learner, freezing its controllers, adding an extra
gradient to an optimizer's step).

The learners stay untouched: unlearning composes with `learner.update(batch)` and adds its own
terms through optimizer step pre-hooks (`extra_gradient`), so each learner's losses have exactly
one home, its own module.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from saferule_core.algos.base import Learner
from saferule_core.algos.bc import BC
from saferule_core.algos.bcq_lag import COST_MEMBERS, REWARD_MEMBERS, BCQLag
from saferule_core.algos.cpq import CPQ
from saferule_core.algos.networks import EnsembleLinear, latent_kl, vae_loss
from saferule_core.errors import UnlearningError


def clone_learner(learner: Learner) -> Learner:
    """An independent copy: same class, config, model info, weights, optimizer and controller state."""
    clone_method = getattr(learner, "clone", None)
    if callable(clone_method):
        copied: Learner = clone_method()
        return copied
    copied = type(learner)(copy.deepcopy(learner.config), learner.info)
    copied.load_state_dict(copy.deepcopy(learner.state_dict()))
    copied.train_mode(True)
    return copied


def network_state(learner: Learner) -> dict[str, dict[str, torch.Tensor]]:
    """A detached copy of every network's weights and buffers (no optimizer state)."""
    return {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
            for name, module in learner.networks().items()}


def load_network_state(learner: Learner, state: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, module in learner.networks().items():
        module.load_state_dict(state[name])


@contextlib.contextmanager
def frozen_buffers(learner: Learner) -> Iterator[None]:
    """Restore every buffer (the PID-Lagrangian's state, CPQ's alpha) when the block ends, so the
    updates inside it cannot move the learner's constraint controllers."""
    saved = [(buffer, buffer.detach().clone()) for module in learner.networks().values() for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextlib.contextmanager
def extra_gradient(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter],
                   loss_fn: Callable[[], torch.Tensor | None]) -> Iterator[None]:
    """While the block runs, every `optimizer.step()` first adds d loss_fn() / d params to the
    gradients already there, so the step follows (learner's loss + extra loss) in one update."""
    params = [p for p in params if p.requires_grad]

    def hook(_optimizer: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        loss = loss_fn()
        if loss is None or not loss.requires_grad:
            return
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for param, grad in zip(params, grads):
            if grad is None:
                continue
            if param.grad is None:
                param.grad = grad.detach().clone()
            else:
                param.grad.add_(grad)

    handle = optimizer.register_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def scaled_gradients(optimizers: Sequence[torch.optim.Optimizer], scale: float) -> Iterator[None]:
    """While the block runs, every step of these optimizers uses `scale` times the gradient
    (a negative scale turns the learner's own descent into ascent)."""

    def hook(optimizer: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.mul_(scale)

    handles = [opt.register_step_pre_hook(hook) for opt in optimizers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def held_still(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """While the block runs, the optimizer's steps leave its parameters where they are (learning
    rate 0; a zero gradient would not do: Adam's momentum would still move them)."""
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    try:
        yield
    finally:
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate


@dataclass
class ModelParts:
    """The parts of a learner that unlearning reads and writes. Critic fields are None for
    learners without critics (BC), behaviour fields for learners without a behaviour model."""

    learner: Learner
    actor: nn.Module
    actor_optimizer: torch.optim.Optimizer
    critics: nn.Module | None = None
    critic_optimizer: torch.optim.Optimizer | None = None
    reward_members: slice | None = None
    cost_members: slice | None = None
    behaviour: nn.Module | None = None
    behaviour_optimizer: torch.optim.Optimizer | None = None
    q_threshold: float | None = None
    critics_target: nn.Module | None = None
    actor_target: nn.Module | None = None
    gamma: float | None = None          # the critics' discount
    cost_scale: float = 1.0             # the cost critics' targets are costs times this
    reward_scale: float = 1.0           # the reward critics' targets are rewards times this

    @property
    def has_critics(self) -> bool:
        return self.critics is not None

    def policy_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """The deployed (deterministic) policy's unit-box actions; gradients reach the actor only."""
        learner = self.learner
        with learner.autocast():
            if isinstance(learner, BCQLag) and learner.config.action_selection == "osrl":
                with torch.no_grad():
                    base = learner.vae.decode(obs)
                actions = learner.actor(obs, base)
            elif isinstance(learner, BCQLag):    # the choice among candidates is made without gradients
                actions = learner.policy_core()(obs)
            else:
                actions = self.actor(obs)
        return actions.float()

    def q_values(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """All critic members' values, [members, B]."""
        if self.critics is None:
            raise UnlearningError(f"{self.learner.info.algo} has no critics")
        with self.learner.autocast():
            return self.critics(obs, actions).float()

    @torch.no_grad()
    def reset_critic_members(self, members: slice, generator: torch.Generator) -> None:
        """Fresh initial weights for these critic members (as a new learner would draw them), the
        same in the target critics, and Adam restarted for the critics: their old values are gone."""
        if self.critics is None or self.critics_target is None or self.critic_optimizer is None:
            raise UnlearningError(f"{self.learner.info.algo} has no critics to reset")
        for layer in self.critics.modules():
            if isinstance(layer, EnsembleLinear):
                layer.init_members(members, generator)
        self._copy_members_to_target(members)
        self.critic_optimizer.state.clear()

    @torch.no_grad()
    def _copy_members_to_target(self, members: slice) -> None:
        """The target critics' `members` set to the critics' own."""
        assert self.critics is not None and self.critics_target is not None
        for layer, target in zip(self.critics.modules(), self.critics_target.modules()):
            if isinstance(layer, EnsembleLinear):
                for name in ("weight", "bias"):
                    getattr(target, name)[members] = getattr(layer, name)[members]

    def fit_critic_members(self, observations: torch.Tensor, actions: torch.Tensor,
                           targets: Sequence[tuple[slice, torch.Tensor]], steps: int, batch_size: int,
                           generator: torch.Generator) -> float:
        """Regress each (members, targets [rows]) group of critic members on its targets (e.g. the
        logged discounted cost-to-go) over random batches of (normalised obs, unit-box action) rows,
        with an Adam of their own (members in no group get a zero gradient, so they stay where they
        are); the target critics' fitted members follow. Returns the last batch's mean squared error
        per fitted member."""
        if self.critics is None or self.critics_target is None:
            raise UnlearningError(f"{self.learner.info.algo} has no critics to fit")
        params = [p for p in self.critics.parameters() if p.requires_grad]
        lr = float(self.critic_optimizer.param_groups[0]["lr"]) if self.critic_optimizer is not None else 1e-3
        optimizer = torch.optim.Adam(params, lr=lr)
        error = torch.zeros(())
        for _ in range(steps):
            rows = torch.randint(observations.shape[0], (batch_size,), generator=generator, device=observations.device)
            q = self.q_values(observations[rows], actions[rows])
            per_member = [(q[members] - values[rows]).pow(2).mean(dim=1) for members, values in targets]
            loss = torch.cat(per_member).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            error = loss.detach() / sum(errors.numel() for errors in per_member)
        for members, _ in targets:
            self._copy_members_to_target(members)
        return float(error)

    def refit_behaviour(self, observations: torch.Tensor, actions: torch.Tensor, steps: int, batch_size: int,
                        generator: torch.Generator) -> float:
        """The behaviour model (BCQ-Lag's and CPQ's VAE) re-drawn with fresh initial weights (drawn
        from `generator`) and fitted alone, with its own loss and a restarted Adam, on random batches
        of (normalised obs, unit-box action) rows: it then proposes only what those rows do. Returns
        the last batch's loss."""
        if self.behaviour is None or self.behaviour_optimizer is None or not isinstance(self.learner, (BCQLag, CPQ)):
            raise UnlearningError(f"{self.learner.info.algo} has no behaviour model to refit")
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in self.behaviour.modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        self.behaviour_optimizer.state.clear()
        beta = self.learner.config.beta
        loss = torch.zeros(())
        for _ in range(steps):
            rows = torch.randint(observations.shape[0], (batch_size,), generator=generator, device=observations.device)
            with self.learner.autocast():
                loss = vae_loss(self.behaviour, observations[rows], actions[rows], beta)
            self.behaviour_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.behaviour_optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def reset_actor_to_behaviour(self, generator: torch.Generator) -> None:
        """BCQ-Lag's perturbation actor re-drawn with a zero output layer: it perturbs nothing, so the
        policy is the behaviour model's proposals chosen among by the critics. The same in the target
        actor, and Adam restarted for the actor."""
        if not isinstance(self.learner, BCQLag) or self.actor_target is None:
            raise UnlearningError("resetting the actor needs a BCQ-Lag model (its behaviour model proposes the "
                                  f"actions while the actor learns again), not {self.learner.info.algo}")
        layers = [module for module in self.actor.modules() if isinstance(module, nn.Linear)]
        for layer in layers[:-1]:
            bound = 1.0 / layer.in_features ** 0.5
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        layers[-1].weight.zero_()
        layers[-1].bias.zero_()
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.actor_optimizer.state.clear()

    def behaviour_scores(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """How far the behaviour model is from proposing each (s, a), and the same measure for data
        it has learned well, both [B]. BCQ-Lag's policy starts from the decoder's z = 0 action, so
        its score is that action's mean squared distance from `a`, against the VAE's own
        reconstruction error of `a` (latent at the encoder mean). CPQ uses the VAE as an
        out-of-distribution detector, so its score is the latent KL that CPQ thresholds, for both."""
        learner = self.learner
        with learner.autocast():
            if isinstance(learner, BCQLag):
                mode = learner.vae.decode(obs).float()
                mean, _ = learner.vae.encode(obs, actions)
                reconstruction = learner.vae.decode(obs, mean).float()
                return ((mode - actions).pow(2).mean(dim=-1), (reconstruction - actions).pow(2).mean(dim=-1))
            if isinstance(learner, CPQ):
                mean, std = learner.vae.encode(obs, actions)
                kl = latent_kl(mean.float(), std.float())
                return kl, kl
        raise UnlearningError(f"{learner.info.algo} has no behaviour model")


def model_parts(learner: Learner) -> ModelParts:
    """The parts of a BCQ-Lag, CPQ or BC learner; UnlearningError for any other kind."""
    if isinstance(learner, BCQLag):
        return ModelParts(learner, learner.actor, learner.actor_optim, learner.critics, learner.critic_optim,
                          REWARD_MEMBERS, COST_MEMBERS, learner.vae, learner.vae_optim, learner.q_threshold,
                          learner.critics_target, learner.actor_target, learner.config.gamma,
                          learner.config.cost_scale, learner.config.reward_scale)
    if isinstance(learner, CPQ):
        return ModelParts(learner, learner.actor, learner.actor_optim, learner.critics, learner.critic_optim,
                          learner.reward_members, learner.cost_members, learner.vae, learner.vae_optim,
                          learner.q_threshold, learner.critics_target, gamma=learner.config.gamma,
                          cost_scale=learner.config.cost_scale, reward_scale=learner.config.reward_scale)
    if isinstance(learner, BC):
        return ModelParts(learner, learner.actor, learner.actor_optim)
    raise UnlearningError(f"unlearning does not know the parts of a {learner.info.algo} model "
                          f"({type(learner).__name__})")
