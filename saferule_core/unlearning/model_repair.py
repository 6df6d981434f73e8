"""The actor improved on simulated episodes of a dynamics model of the retained data.

Why: the critics of an unlearned model keep the poisoned returns for thousands of updates (their
TD transient; docs/safe_rule.md rounds 7-16), so an actor improved on them is either held back or
let through to the poison. A one-step model fitted on the retained transitions carries no poisoned
label and ranks policies by true reward and cost far better than the critics (round 5: 0.92 against
0.16 for reward). Here the actor's weights follow the gradient of the simulated episode returns
(back-propagation through the model, the policy's choice among candidates made without gradients
as at deployment): reward return up, each episode's cost return below a target, costs first.
Only the actor moves, so every action stays within the behaviour model's reach (BCQ's perturbation
bound), where the model was fitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from saferule_core.unlearning.dynamics import DynamicsEnsemble, RolloutStarts, simulate_episodes
from saferule_core.unlearning.hinge import soft_hinge
from saferule_core.unlearning.parts import ModelParts

GRADIENT_CLIP = 10.0      # back-propagation through a whole episode can spike; Adam's moments should not


@dataclass(frozen=True)
class ModelRepairSettings:
    steps: int
    learning_rate: float
    cost_target: float            # an episode's simulated cost return should stay below this
    cost_penalty: float           # weight of the soft hinge on the cost excess, against reward in its unit
    pessimistic_cost: bool        # each step's cost is the largest ensemble member's
    temperature: float = 0.1      # of the cost hinge, in units of cost_target


StepCallback = Callable[[int, dict[str, float]], None]
"""(model-repair step, its metrics): progress, snapshots, cancellation."""


def repair_on_model(parts: ModelParts, model: DynamicsEnsemble, draw_starts: Callable[[int], RolloutStarts],
                    settings: ModelRepairSettings, on_step: StepCallback) -> None:
    """`settings.steps` Adam steps of the actor on
    -mean(R_i) / R_unit + cost_penalty * mean(h((C_i - target) / target; temperature)),
    with R_i, C_i the simulated reward and cost returns of episode i from `draw_starts(step)` and
    R_unit the policy's mean |R| at the start."""
    params = [p for p in parts.actor.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.learning_rate)
    target = max(settings.cost_target, 1e-3)
    with torch.no_grad():
        start_reward, _ = simulate_episodes(model, parts.policy_actions, draw_starts(0), settings.pessimistic_cost)
    reward_unit = max(float(start_reward.mean().abs()), 1e-3)
    for step in range(1, settings.steps + 1):
        reward, cost = simulate_episodes(model, parts.policy_actions, draw_starts(step), settings.pessimistic_cost)
        cost_excess = soft_hinge((cost - target) / target, settings.temperature).mean()
        loss = -reward.mean() / reward_unit + settings.cost_penalty * cost_excess
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, GRADIENT_CLIP)
        optimizer.step()
        on_step(step, {"model_repair_reward": float(reward.detach().mean()),
                       "model_repair_cost": float(cost.detach().mean()),
                       "model_repair_over_target": float((cost.detach() > target).float().mean()),
                       "model_repair_grad_norm": float(grad_norm)})


@torch.no_grad()
def simulated_values(model: DynamicsEnsemble, policy: Callable[[torch.Tensor], torch.Tensor], obs: torch.Tensor,
                     actions: torch.Tensor, horizon: int, gamma: float,
                     chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Discounted reward and cost returns of taking `actions` at `obs` and following `policy` for
    `horizon` steps in total, simulated in the model: a Monte Carlo value of the policy itself (not
    of the logged continuation) from labels that hold no poison. [rows] each."""
    rewards, costs = [], []
    for begin in range(0, obs.shape[0], chunk):
        state, action = obs[begin:begin + chunk], actions[begin:begin + chunk]
        reward = torch.zeros(state.shape[0], device=state.device)
        cost = torch.zeros_like(reward)
        discount = 1.0
        for _ in range(horizon):
            state, step_reward, step_cost = model.predict(state, action)
            reward += discount * step_reward
            cost += discount * step_cost
            discount *= gamma
            action = policy(state).float()
        rewards.append(reward)
        costs.append(cost)
    return torch.cat(rewards), torch.cat(costs)
