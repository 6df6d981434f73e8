"""`saferule eval`: run a trained policy in its simulator and report DSRL's normalised scores."""

from __future__ import annotations

import argparse
from pathlib import Path

from saferule_core.errors import ModelError
from saferule_core.eval import evaluate_policy
from saferule_core.io_utils import atomic_write_json
from saferule_core.tasks.spec import get_task

_EPILOG = """scores:
  normalised reward  (mean return - R_min) / (R_max - R_min), DSRL's per-task constants
  normalised cost    mean episode cost / threshold; <= 1 means safe at that threshold

examples:
  saferule eval runs/bcq --episodes 20 --seed 0
  saferule eval runs/bcq --episodes 50 --json runs/bcq/eval.json
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a trained policy online (return, cost, normalised scores)",
        description="Run a trained model's deterministic policy for a number of episodes in its task's simulator "
                    "and print mean/std of return and cost with DSRL's normalised reward and cost per threshold.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="directory of a trained model (saferule train --out)")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes' start states (default 0)")
    parser.add_argument("--task", default=None, help="task to run in (default: the task the model was trained on)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=None, metavar="K",
                        help="episode cost thresholds (default: the task's, 10 20 40 for Bullet tasks)")
    parser.add_argument("--random-start-steps", type=int, default=None, metavar="N",
                        help="drive the first N steps of every episode with seeded uniform random actions, the same "
                             "for every model evaluated with this --seed (default: the task's; 10 on the Run tasks, "
                             "whose resets barely vary, 0 elsewhere)")
    parser.add_argument("--envs", type=int, default=10, help="episodes simulated in lockstep (default 10)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the result as JSON here")
    parser.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from saferule_core.algos.checkpoint import policy_function  # torch: imported only when needed
    from saferule_core.unlearning.models import load_model  # a single model or a SISA ensemble

    learner = load_model(args.model_dir)
    policy_fn, model_task = policy_function(learner), learner.info.task
    task_name = args.task or model_task
    if not task_name:
        raise ModelError(f"the model in {args.model_dir} does not name its task; pass --task")
    spec = get_task(task_name)
    result = evaluate_policy(policy_fn, spec, episodes=args.episodes, seed=args.seed,
                             thresholds=args.thresholds, num_envs=args.envs, progress=True,
                             random_start_steps=args.random_start_steps)
    print(result.format_table())
    if args.json is not None:
        atomic_write_json(args.json, {"model_dir": str(args.model_dir), **result.to_dict()})
        print(f"wrote {args.json}")
    return 0
