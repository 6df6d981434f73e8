"""Baseline unlearning methods under the same interface as Safe-RULE.

  retrain       exact unlearning: a fresh model fitted to the retained data with the same settings
                and as many updates as the original (the gold standard; algos.trainer.fit)
  finetune      the learner's own updates on retained data only
  neggrad_plus  descent on retained data plus scaled gradient ascent of the learner's loss on
                forget data (controllers restored after each ascent step)
  trajdeleter   TrajDeleter-style, not cost aware: (1) the policy lowers its reward value on forget
                states while keeping it on retained states; (2) the learner's updates on retained
                data with its Lagrange multiplier / alpha frozen
SISA lives in `sisa.py`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from saferule_core.algos.base import Learner
from saferule_core.algos.configs import TrainConfig
from saferule_core.algos.trainer import fit
from saferule_core.errors import UnlearningError
from saferule_core.unlearning.methods import MethodOutcome
from saferule_core.unlearning.parts import frozen_buffers, model_parts, scaled_gradients
from saferule_core.unlearning.session import Session


def retrain_steps(session: Session) -> int:
    steps = session.config.retrain_steps or session.learner.num_updates
    if steps <= 0:
        raise UnlearningError("retrain needs retrain_steps: the model does not record how many updates it was "
                              "trained with")
    return steps


def run_retrain(session: Session) -> MethodOutcome:
    """A new learner of the same algorithm and settings, trained from scratch on the retained data."""
    learner, cfg = session.learner, session.config
    steps = retrain_steps(session)
    train_config = TrainConfig(steps=steps, batch_size=cfg.batch_size, seed=cfg.seed, num_threads=cfg.num_threads,
                               log_every=cfg.log_every, checkpoint_every=0, progress=False)

    def on_step(step: int, _learner: Learner) -> None:
        session.updates = step
        if step % cfg.log_every == 0:
            session.report_progress("retrain", step / steps)
        session.check_stop("retrain")

    with tempfile.TemporaryDirectory(prefix="saferule-retrain-") as tmp:
        fresh, result = fit(learner.info.algo, session.split.retained, Path(tmp) / "model", train_config,
                            overrides=learner.config_dict(), callback=on_step)
    session.history.append({"update": float(steps), "seconds": round(result.seconds, 3), **result.metrics})
    return MethodOutcome(learner=fresh)


def run_finetune(session: Session) -> MethodOutcome:
    learner, retained, steps = session.learner, session.retained_sampler(), session.config.steps
    learner.train_mode(True)
    for step in range(1, steps + 1):
        session.step_done("finetune", step / steps, learner.update(retained.sample()))
    session.flush("finetune", 1.0)
    return MethodOutcome()


def run_neggrad_plus(session: Session) -> MethodOutcome:
    learner, steps = session.learner, session.config.steps
    retained, forget = session.retained_sampler(), session.forget_sampler()
    ascent = -session.config.neggrad_plus.ascent_weight
    optimizers = list(learner.optimizers().values())
    learner.train_mode(True)
    for step in range(1, steps + 1):
        metrics = learner.update(retained.sample())
        with frozen_buffers(learner), scaled_gradients(optimizers, ascent):
            forget_metrics = learner.update(forget.sample())
        metrics.update({f"forget_{name}": value for name, value in forget_metrics.items()})
        session.step_done("neggrad_plus", step / steps, metrics)
    session.flush("neggrad_plus", 1.0)
    return MethodOutcome()


def run_trajdeleter(session: Session) -> MethodOutcome:
    learner, cfg = session.learner, session.config
    parts = model_parts(learner)
    if not parts.has_critics or parts.reward_members is None:
        raise UnlearningError(f"trajdeleter needs a learner with reward critics; {learner.info.algo} has none")
    retained, forget = session.retained_sampler(), session.forget_sampler()
    steps = cfg.steps
    forget_steps = int(round(cfg.trajdeleter.forget_fraction * steps))
    policy = learner.policy_core()
    params = [p for p in policy.parameters() if p.requires_grad]
    lr = float(parts.actor_optimizer.param_groups[0]["lr"])
    optimizer = torch.optim.Adam(params, lr=lr)
    weight = cfg.trajdeleter.forget_weight
    learner.train_mode(True)

    def reward_value(obs: torch.Tensor) -> torch.Tensor:
        with learner.autocast():
            actions = policy(obs)
        return parts.q_values(obs, actions.float())[parts.reward_members].min(dim=0).values.mean()

    for step in range(1, forget_steps + 1):
        forget_value = reward_value(forget.sample().observations)
        retained_value = reward_value(retained.sample().observations)
        loss = weight * forget_value - retained_value
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        optimizer.step()
        session.step_done("trajdeleter-forget", step / steps,
                          {"forget_reward_value": forget_value.detach(), "retained_reward_value": retained_value.detach()})
    with frozen_buffers(learner):
        for step in range(forget_steps + 1, steps + 1):
            session.step_done("trajdeleter-converge", step / steps, learner.update(retained.sample()))
    session.flush("trajdeleter-converge", 1.0)
    return MethodOutcome()
