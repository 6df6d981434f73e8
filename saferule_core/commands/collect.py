"""`saferule collect`: generate an offline dataset from a family of scripted behaviour policies."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from saferule_core.collect import (
    DEFAULT_EPISODES,
    SUPPORTED_TASKS,
    CollectConfig,
    collect,
    episode_aggressiveness,
    reward_cost_png,
)
from saferule_core.data.store import DatasetStore
from saferule_core.errors import DatasetError
from saferule_core.tasks.spec import get_task

PLOT_FILE = "reward_cost.png"

_EPILOG = f"""behaviour family:
  Every episode draws an aggressiveness in [--aggressiveness LOW HIGH]: 0 drives slowly inside
  the safety boundaries (cost 0), 1 drives fast over the speed limit and across the boundaries
  (high reward, high cost). The default range 0..1 spans the reward/cost plane like DSRL's data.
  Tasks: {', '.join(SUPPORTED_TASKS)}; default episodes: {', '.join(f'{k} {v}' for k, v in DEFAULT_EPISODES.items())}.

examples:
  saferule collect --task BallRun --out data/ballrun
  saferule collect --task CarCircle --episodes 200 --robots 5 --seed 1 --out data/carcircle
  saferule collect --task BallRun --aggressiveness 0.8 1.0 --seed 7 --out data/ballrun-reckless
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "collect", help="generate an offline dataset by rolling out scripted behaviour policies",
        description="Roll out a family of scripted behaviour policies, from cautious to reckless, on a simulated "
                    f"task and write the episodes (with robot/bag/time provenance) as a new dataset directory, "
                    f"plus {PLOT_FILE}: the episodes' reward/cost scatter.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help=f"task name: {', '.join(SUPPORTED_TASKS)}")
    parser.add_argument("--out", type=Path, required=True, help="new dataset directory (must not exist)")
    parser.add_argument("--episodes", type=int, default=None, help="number of episodes (default: per task, see below)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--robots", type=int, default=3,
                        help="spread episodes over robot ids robot_1..robot_K (default 3)")
    parser.add_argument("--aggressiveness", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                        help="range of behaviour aggressiveness in [0, 1] (default 0 1; reckless only: 0.8 1)")
    parser.add_argument("--envs", type=int, default=8, help="episodes simulated in lockstep per wave (default 8)")
    parser.set_defaults(handler=_collect)


def _collect(args: argparse.Namespace) -> int:
    spec = get_task(args.task)
    if args.out.exists():
        raise DatasetError(f"{args.out} already exists; choose another --out directory")
    config = CollectConfig(episodes=args.episodes, seed=args.seed, robots=args.robots,
                           aggressiveness_range=(args.aggressiveness[0], args.aggressiveness[1]),
                           num_envs=args.envs)
    dataset = collect(spec, config, progress=True)
    returns, costs = dataset.episode_returns(), dataset.episode_cost_returns()
    png = reward_cost_png(returns, costs, episode_aggressiveness(dataset), spec.cost_thresholds,
                          title=f"{spec.name} seed {args.seed}")
    DatasetStore.create(args.out, dataset, extra_files={PLOT_FILE: png}, progress=True)
    print(f"wrote {dataset.num_episodes} episodes ({dataset.num_transitions} transitions) of {spec.name} to {args.out}")
    print(f"  return  min {returns.min():.1f}  median {np.median(returns):.1f}  max {returns.max():.1f}")
    print(f"  cost    min {costs.min():.1f}  median {np.median(costs):.1f}  max {costs.max():.1f}")
    shares = "  ".join(f"> {k:g}: {np.mean(costs > k):.0%}" for k in spec.cost_thresholds)
    print(f"  episodes with cost {shares}")
    print(f"  plot    {args.out / PLOT_FILE}")
    return 0
