"""K seeds trained as one stack vs the same K seeds trained one by one: same results, less time?

On one scripted dataset, trains seeds 0..K-1 of one configuration twice, as one stacked run
(`algos.stacked.fit_seeds`) and as K single runs (`algos.trainer.fit`), evaluates every model on
the same episodes (the task's start-state perturbation) and reports, side by side in one run,
mean normalised reward and cost with 95% t-intervals over seeds, the per-seed differences, and
both wall times.

  .venv/bin/python benchmarks/stack_vs_single.py --seeds 0 1 2 3 4 --steps 3000 \
      --set actor_hidden=[64,64] critic_hidden=[64,64] vae_hidden=128

Writes benchmarks/results/stack_vs_single.json and .md (stamped with commit, command line, host).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from regime import dataset_for, parse_settings  # noqa: E402
from stamp import run_stamp  # noqa: E402

from saferule_core.algos.checkpoint import load_policy  # noqa: E402
from saferule_core.algos.stacked import StackTrainConfig, fit_seeds, seed_dirs  # noqa: E402
from saferule_core.algos.trainer import TrainConfig, fit  # noqa: E402
from saferule_core.eval.evaluate import evaluate_policy  # noqa: E402
from saferule_core.io_utils import atomic_write_json, atomic_write_text  # noqa: E402
from saferule_core.tasks.spec import get_task  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "stack_vs_single"


# Student's t, 97.5% quantile, by degrees of freedom (no scipy in the venv)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval."""
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return float(arr.mean()), float("nan")
    df = len(arr) - 1
    quantile = T975.get(df) or T975[max(k for k in T975 if k <= df)]
    return float(arr.mean()), float(quantile * arr.std(ddof=1) / np.sqrt(len(arr)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="BallRun")
    parser.add_argument("--algo", default="bcq_lag")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tag", default="", help="suffix of the results files")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = parse_settings(args.set)
    stamped = run_stamp("benchmarks/stack_vs_single.py", argv)
    spec = get_task(args.task)
    dataset = dataset_for(args.task, 0)
    common = {"steps": args.steps, "batch_size": args.batch_size, "num_threads": args.threads,
              "log_every": 100, "checkpoint_every": 0, "progress": False}

    def evaluate(directory: Path) -> dict[str, float]:
        policy_fn, _ = load_policy(directory)
        result = evaluate_policy(policy_fn, spec, episodes=args.episodes, seed=1, thresholds=(10.0,))
        return {"normalized_reward": result.normalized_reward, "normalized_cost": result.normalized_costs[10.0]}

    with tempfile.TemporaryDirectory(prefix="stack-vs-single-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        fit_seeds(args.algo, dataset, args.seeds, seed_dirs(root / "stack", args.seeds), StackTrainConfig(**common),
                  overrides)
        stacked_s = time.perf_counter() - began
        print(f"stacked: {len(args.seeds)} models in {stacked_s:.0f} s", flush=True)
        began = time.perf_counter()
        for seed in args.seeds:
            fit(args.algo, dataset, root / f"single_{seed}", TrainConfig(seed=seed, **common), overrides)
        single_s = time.perf_counter() - began
        print(f"single: {len(args.seeds)} models in {single_s:.0f} s", flush=True)
        rows: list[dict[str, Any]] = []
        for seed, stacked_dir in zip(args.seeds, seed_dirs(root / "stack", args.seeds)):
            rows.append({"seed": seed, "stacked": evaluate(stacked_dir), "single": evaluate(root / f"single_{seed}")})

    summary = {}
    for way in ("stacked", "single"):
        summary[way] = {metric: t_interval([r[way][metric] for r in rows])
                        for metric in ("normalized_reward", "normalized_cost")}
    largest = {metric: max(abs(r["stacked"][metric] - r["single"][metric]) for r in rows)
               for metric in ("normalized_reward", "normalized_cost")}
    payload = {**stamped, "task": args.task, "algo": args.algo,
        "settings": overrides, "steps": args.steps, "batch_size": args.batch_size, "threads": args.threads,
        "seeds": args.seeds, "eval_episodes": args.episodes, "stacked_seconds": stacked_s, "single_seconds": single_s,
        "speedup": single_s / stacked_s, "summary": summary, "largest_per_seed_difference": largest, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"stack_vs_single{'-' + args.tag if args.tag else ''}"
    atomic_write_json(RESULTS / f"{name}.json", payload)
    text = render(payload)
    atomic_write_text(RESULTS / f"{name}.md", text)
    print(text)
    return 0


def render(p: dict[str, Any]) -> str:
    lines = [f"# Stacked vs single training `{p['command']}`", "",
             f"{p['task']}, {p['algo']} {p['settings']}, {p['steps']} updates, batch {p['batch_size']}, "
             f"{p['threads']} threads, seeds {p['seeds']}, {p['eval_episodes']} evaluation episodes per model. "
             f"Commit {p['commit']}, host {p['host']}.", "",
             "| training | wall time | normalised reward (95% CI) | normalised cost @10 (95% CI) |", "|---|---|---|---|"]
    for way, seconds in (("stacked", p["stacked_seconds"]), ("single", p["single_seconds"])):
        r, c = p["summary"][way]["normalized_reward"], p["summary"][way]["normalized_cost"]
        lines.append(f"| {way} | {seconds:.0f} s | {r[0]:.3f} +- {r[1]:.3f} | {c[0]:.2f} +- {c[1]:.2f} |")
    lines += ["", f"Single runs' wall time / stacked run's: {p['speedup']:.2f}x. Largest per-seed "
                  f"difference: reward {p['largest_per_seed_difference']['normalized_reward']:.3f}, cost "
                  f"{p['largest_per_seed_difference']['normalized_cost']:.2f}.", "",
              "| seed | stacked reward | single reward | stacked cost | single cost |", "|---|---|---|---|---|"]
    for row in p["rows"]:
        lines.append(f"| {row['seed']} | {row['stacked']['normalized_reward']:.3f} | "
                     f"{row['single']['normalized_reward']:.3f} | {row['stacked']['normalized_cost']:.2f} | "
                     f"{row['single']['normalized_cost']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
