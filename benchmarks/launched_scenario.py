"""Does Forget lower the fleet's cost in the launched scenario? Offline, over many seeds (issue 13).

The launched fleet's story, without ROS: historical logs of three robots (the demo's behaviour
drivers: cautious healthy robots, a reckless robot_3), robot_3's unsafe episodes relabelled as
cost-free (`saferule_core.attacks.robot.poison_robot`), a first policy trained on all of it with the
bootstrap's short budget, then robot_3's episodes forgotten with Safe-RULE and, for reference,
retrained without them. Every policy is evaluated online on the task (the demo's evaluator).

Per learner and seed: the episode cost (and normalised reward) of the poisoned policy, the
Safe-RULE policy and the retrained one; summary: in how many seeds Forget lowered the cost, and
in how many the result is within the task's cost limit.

  .venv/bin/python benchmarks/launched_scenario.py --algos bc_safe bcq_lag --seeds 0 1 2 3 4 5 6 7 8 9

Writes benchmarks/results/launched_scenario.json and .md (stamped with commit, command, host).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stamp import run_stamp  # noqa: E402

from saferule_core.algos.trainer import TrainConfig, fit  # noqa: E402
from saferule_core.attacks.robot import poison_robot  # noqa: E402
from saferule_core.io_utils import atomic_write_json, atomic_write_text  # noqa: E402
from saferule_core.tasks.spec import get_task  # noqa: E402
from saferule_core.unlearning.api import unlearn  # noqa: E402
from saferule_core.unlearning.config import UnlearnConfig  # noqa: E402
from saferule_ros.demo import DemoSettings, evaluate_module  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ROBOTS = ["robot_1", "robot_2", "robot_3"]
COMPROMISED = "robot_3"
# the launched-loop test's learner (tests/ros/test_launched_loop.py): small networks for BCQ-Lag
SMALL_BCQ = {"actor_hidden": (64, 64), "critic_hidden": (64, 64), "vae_hidden": 128}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["bc_safe", "bcq_lag"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--train-steps", type=int, default=600, help="the bootstrap's updates (default 600)")
    parser.add_argument("--unlearn-steps", type=int, default=300, help="Safe-RULE updates (default 300)")
    parser.add_argument("--cautious", type=int, default=40, help="historical cautious episodes")
    parser.add_argument("--reckless", type=int, default=20, help="historical reckless episodes")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per policy")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    stamped = run_stamp("benchmarks/launched_scenario.py", argv)
    torch.set_num_threads(args.threads)
    settings = DemoSettings(history_cautious_episodes=args.cautious, history_reckless_episodes=args.reckless,
                            eval_episodes=args.episodes)
    logs = settings.historical_logs(ROBOTS)
    limit = get_task(settings.task).cost_thresholds[0]       # the launched-loop test's threshold

    def outcome(learner: Any) -> dict[str, float]:
        result = evaluate_module(learner.deployable_policy(), settings)
        return {"cost": float(result.mean_cost), "normalized_reward": float(result.normalized_reward)}

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="launched-scenario-") as tmp:
        for algo in args.algos:
            overrides = SMALL_BCQ if algo == "bcq_lag" else {}
            for seed in args.seeds:
                data, _ = poison_robot(logs, COMPROMISED, seed=seed)
                forget = np.array([episode.robot_id == COMPROMISED for episode in data.episodes])
                train = TrainConfig(steps=args.train_steps, batch_size=256, num_threads=args.threads,
                                    checkpoint_every=0, progress=False, seed=seed)
                out = Path(tmp) / f"{algo}-{seed}"
                poisoned, _ = fit(algo, data, out, train, overrides)
                began = time.perf_counter()
                unlearned, _ = unlearn(poisoned, data, forget, "safe_rule",
                                       UnlearnConfig(steps=args.unlearn_steps, batch_size=256, num_threads=args.threads,
                                                     seed=seed))
                unlearn_s = time.perf_counter() - began
                shutil.rmtree(out)
                retrained, _ = fit(algo, data.subset_episodes(~forget), out,
                                   TrainConfig(steps=args.train_steps, batch_size=256, num_threads=args.threads,
                                               checkpoint_every=0, progress=False, seed=seed + 1000), overrides)
                shutil.rmtree(out)
                row = {"algo": algo, "seed": seed, "poisoned": outcome(poisoned), "safe_rule": outcome(unlearned),
                       "retrain": outcome(retrained), "unlearn_s": unlearn_s}
                rows.append(row)
                print(f"{algo:<8} seed {seed}: cost {row['poisoned']['cost']:6.1f} -> Safe-RULE "
                      f"{row['safe_rule']['cost']:6.1f} (retrain {row['retrain']['cost']:6.1f})", flush=True)

    summary = {}
    for algo in args.algos:
        mine = [r for r in rows if r["algo"] == algo]
        summary[algo] = {
            "seeds": len(mine),
            "poisoned_unsafe": sum(r["poisoned"]["cost"] > limit for r in mine),
            "lowered": sum(r["safe_rule"]["cost"] < r["poisoned"]["cost"] for r in mine),
            "safe_rule_safe": sum(r["safe_rule"]["cost"] <= limit for r in mine),
            "retrain_safe": sum(r["retrain"]["cost"] <= limit for r in mine)}
    payload = {**stamped, "settings": vars(args), "cost_limit": limit, "summary": summary, "runs": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "launched_scenario.json", payload)
    atomic_write_text(RESULTS / "launched_scenario.md", render_markdown(payload))
    print(render_markdown(payload))
    return 0


def render_markdown(payload: dict[str, Any]) -> str:
    cfg, limit = payload["settings"], payload["cost_limit"]
    lines = [f"# Launched scenario offline `{payload['command']}`", "",
             f"{cfg['cautious']} cautious and {cfg['reckless']} reckless historical episodes over 3 robots, "
             f"robot_3's logs relabelled; {cfg['train_steps']} training updates, {cfg['unlearn_steps']} Safe-RULE "
             f"updates; {cfg['episodes']} evaluation episodes per policy; cost limit {limit:g}. Commit "
             f"{payload['commit']}, host {payload['host']}.", "",
             "| learner | seeds | poisoned unsafe | Forget lowered the cost | Safe-RULE safe | retrain safe |",
             "|---|---|---|---|---|---|"]
    for algo, s in payload["summary"].items():
        lines.append(f"| {algo} | {s['seeds']} | {s['poisoned_unsafe']} | {s['lowered']} | {s['safe_rule_safe']} | "
                     f"{s['retrain_safe']} |")
    lines += ["", "| learner | seed | poisoned cost / reward | Safe-RULE | retrain |", "|---|---|---|---|---|"]
    for r in payload["runs"]:
        cells = [f"{r[k]['cost']:.1f} / {r[k]['normalized_reward']:.3f}" for k in ("poisoned", "safe_rule", "retrain")]
        lines.append(f"| {r['algo']} | {r['seed']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
