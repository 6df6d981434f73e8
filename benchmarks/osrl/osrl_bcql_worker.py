"""Runs OSRL's own BCQ-Lag (osrl-lib) on a dataset, inside .venv-osrl; prints one JSON line.

Used by benchmarks/osrl_side_by_side.py, never imported by SafeRULE. The training loop is OSRL's
(train_bcql.py): a DataLoader over its TransitionDataset, `BCQLTrainer.train_one_step` per batch,
with OSRL's BCQ-Lag defaults (256x256 actor/critics, VAE 400, 10 sampled actions, reward scale
0.1, PID 0.1/0.003/0.001). Evaluation uses SafeRULE's evaluator so both sides are scored alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "shim"))
sys.path.insert(0, str(HERE.parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fsrl.utils import DummyLogger  # noqa: E402
from osrl.algorithms import BCQL, BCQLTrainer  # noqa: E402
from osrl.common import TransitionDataset  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="npz with the DSRL keys")
    parser.add_argument("--episode-len", type=int, required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cost-limit", type=float, default=10.0)
    parser.add_argument("--eval-task", default="")
    parser.add_argument("--eval-episodes", type=int, default=10)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    data = {k: v for k, v in np.load(args.data).items()}
    model = BCQL(
        state_dim=data["observations"].shape[1], action_dim=data["actions"].shape[1], max_action=1.0,
        a_hidden_sizes=[256, 256], c_hidden_sizes=[256, 256], vae_hidden_sizes=400,
        sample_action_num=10, gamma=0.99, tau=0.005, phi=0.05, lmbda=0.75, beta=0.5,
        PID=[0.1, 0.003, 0.001], num_q=1, num_qc=1, cost_limit=int(args.cost_limit),
        episode_len=args.episode_len, device="cpu",
    )
    trainer = BCQLTrainer(model, env=None, logger=DummyLogger(), actor_lr=1e-3, critic_lr=1e-3,
                          vae_lr=1e-3, reward_scale=0.1, cost_scale=1.0, device="cpu")
    loader = iter(DataLoader(TransitionDataset(data, reward_scale=0.1, cost_scale=1.0),
                             batch_size=512, pin_memory=False, num_workers=0))

    def one_step() -> None:
        observations, next_observations, actions, rewards, costs, done = next(loader)
        trainer.train_one_step(observations, next_observations, actions, rewards, costs, done)

    for _ in range(args.warmup):
        one_step()
    start = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    seconds = time.perf_counter() - start
    out: dict[str, object] = {"steps": args.steps, "ms_per_update": 1000 * seconds / args.steps}

    if args.eval_task:
        from saferule_core.eval import evaluate_policy

        model.eval()

        def policy_fn(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                o = torch.as_tensor(obs, dtype=torch.float32)
                return model.actor(o, model.vae.decode(o)).numpy()

        result = evaluate_policy(policy_fn, args.eval_task, episodes=args.eval_episodes, seed=1000 + args.seed)
        out["eval"] = result.to_dict()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
