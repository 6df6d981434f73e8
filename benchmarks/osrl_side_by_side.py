"""Correctness side by side: our BCQ-Lag vs OSRL's, same data, same sizes, same steps, 3 seeds.

Both learners train on one dataset collected here (BallRun by default), with OSRL's BCQ-Lag
settings (256x256 actor and critics, VAE 400, 10 sampled actions, batch 512, reward scale 0.1,
PID 0.1/0.003/0.001, cost limit 10) and 2 threads (--threads); both are scored by the same evaluator
(saferule_core.eval) on the same evaluation seeds. OSRL runs in its own venv (.venv-osrl, made by
benchmarks/osrl/setup_venv.sh) through benchmarks/osrl/osrl_bcql_worker.py.

"Same within seed noise" is read as: the difference of the two means is within two standard
errors of that difference (from the per-seed spread of both sides).

Usage:
    .venv/bin/python benchmarks/osrl_side_by_side.py [--task BallRun] [--steps 3000] [--seeds 0 1 2]
Writes benchmarks/results/osrl_side_by_side.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from saferule_core.io_utils import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OSRL_PY = ROOT / ".venv-osrl" / "bin" / "python"
WORKER = ROOT / "benchmarks" / "osrl" / "osrl_bcql_worker.py"


def run_ours(dataset, task: str, steps: int, seed: int, precision: str, eval_episodes: int,
             work: Path, threads: int, normalize: bool) -> dict[str, object]:
    from saferule_core.algos.checkpoint import load_policy
    from saferule_core.algos.trainer import TrainConfig, fit
    from saferule_core.eval import evaluate_policy

    out = work / f"ours-s{seed}"
    began = time.perf_counter()
    _, result = fit("bcq_lag", dataset, out,
                    TrainConfig(steps=steps, batch_size=512, seed=seed, num_threads=threads, checkpoint_every=0,
                                progress=False),
                    overrides={"precision": precision, "cost_limit": 10.0, "normalize_observations": normalize})
    train_s = time.perf_counter() - began
    policy_fn, _ = load_policy(out)
    evaluation = evaluate_policy(policy_fn, task, episodes=eval_episodes, seed=1000 + seed)
    return {"ms_per_update": 1000 * result.seconds / steps, "train_s": train_s, "eval": evaluation.to_dict()}


def run_osrl(npz: Path, task: str, episode_len: int, steps: int, seed: int, eval_episodes: int,
             threads: int) -> dict[str, object]:
    proc = subprocess.run(
        [str(OSRL_PY), str(WORKER), "--data", str(npz), "--episode-len", str(episode_len), "--steps", str(steps),
         "--warmup", "0", "--seed", str(seed), "--threads", str(threads), "--eval-task", task,
         "--eval-episodes", str(eval_episodes)],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"OSRL worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="BallRun")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--normalize-observations", action="store_true",
                        help="ours normalises observations (our default for training); OSRL's BCQ-Lag does not, "
                             "so the like-for-like comparison leaves it off")
    parser.add_argument("--reuse-osrl", type=Path, default=None, metavar="JSON",
                        help="take OSRL's runs from an earlier result file of the same task, steps, seeds and "
                             "evaluation episodes instead of training OSRL again (it is the slow side)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads of both learners (1 when other work shares the cores)")
    args = parser.parse_args()
    if not OSRL_PY.exists():
        subprocess.run(["bash", str(ROOT / "benchmarks" / "osrl" / "setup_venv.sh")], check=True)

    import torch

    from saferule_core.collect import collect_episodes
    from saferule_core.data.dataset import TRANSITION_KEYS
    from saferule_core.tasks import get_task

    reused: dict[int, dict[str, object]] = {}
    if args.reuse_osrl is not None:
        earlier = json.loads(args.reuse_osrl.read_text())
        # files from before "eval_episodes" was recorded used the fixed default of 20
        same = (earlier.get("task"), earlier.get("steps"), earlier.get("eval_episodes", 20)) == \
            (args.task, args.steps, args.eval_episodes)
        reused = {int(r["seed"]): r["osrl"] for r in earlier.get("rows", [])}
        if not same or not set(args.seeds) <= set(reused):
            raise SystemExit(f"{args.reuse_osrl} is not a run of {args.task} with {args.steps} steps, "
                             f"{args.eval_episodes} evaluation episodes and seeds {args.seeds}")
    torch.set_num_threads(args.threads)
    spec = get_task(args.task)
    dataset = collect_episodes(args.task, seed=0, progress=True)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="osrl-sbs-") as tmp:
        work = Path(tmp)
        npz = work / "data.npz"
        np.savez(npz, **{key: getattr(dataset, key) for key in TRANSITION_KEYS})
        for seed in args.seeds:
            print(f"seed {seed}: ours ...", flush=True)
            ours = run_ours(dataset, args.task, args.steps, seed, args.precision, args.eval_episodes, work,
                            args.threads, args.normalize_observations)
            print(f"seed {seed}: OSRL ...", flush=True)
            osrl = reused.get(seed) or run_osrl(npz, args.task, spec.episode_len, args.steps, seed,
                                                args.eval_episodes, args.threads)
            rows.append({"seed": seed, "ours": ours, "osrl": osrl})
            for side in ("ours", "osrl"):
                ev = rows[-1][side]["eval"]  # type: ignore[index]
                print(f"  {side:5s} reward {ev['normalized_reward']:.3f} cost {ev['normalized_cost']['10']:.3f} "
                      f"({rows[-1][side]['ms_per_update']:.0f} ms/update)", flush=True)  # type: ignore[index]

    summary: dict[str, dict[str, float]] = {}
    for metric, get in (("normalized_reward", lambda ev: ev["normalized_reward"]),
                        ("normalized_cost@10", lambda ev: ev["normalized_cost"]["10"])):
        ours_mean, ours_std = summarise([get(r["ours"]["eval"]) for r in rows])  # type: ignore[index]
        osrl_mean, osrl_std = summarise([get(r["osrl"]["eval"]) for r in rows])  # type: ignore[index]
        n = len(rows)
        se = float(np.sqrt((ours_std ** 2 + osrl_std ** 2) / n))
        summary[metric] = {"ours_mean": ours_mean, "ours_std": ours_std, "osrl_mean": osrl_mean,
                           "osrl_std": osrl_std, "difference": ours_mean - osrl_mean, "two_se": 2 * se,
                           "within_seed_noise": abs(ours_mean - osrl_mean) <= 2 * se}
    report = {"task": args.task, "steps": args.steps, "threads": args.threads, "eval_episodes": args.eval_episodes,
              "ours_normalize_observations": args.normalize_observations,
              "osrl_reused_from": str(args.reuse_osrl) if args.reuse_osrl else None, "seeds": args.seeds,
              "precision": args.precision,
              "dataset": {"episodes": dataset.num_episodes, "transitions": dataset.num_transitions},
              "rows": rows, "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "osrl_side_by_side.json", json.dumps(report, indent=2) + "\n")
    lines = [f"# BCQ-Lag: SafeRULE vs OSRL on {args.task} ({args.steps} updates, seeds {args.seeds}, "
             f"ours in {args.precision}, observations {'normalised' if args.normalize_observations else 'raw, as OSRL'})",
             "", f"Dataset: {dataset.num_episodes} episodes collected here; both trained on it with OSRL's BCQ-Lag "
             f"settings, {args.threads} thread(s), scored by the same evaluator ({args.eval_episodes} episodes per "
             "seed). Same within seed noise: the difference of the means is within two standard errors." +
             (f" OSRL's runs reused from {args.reuse_osrl.name}." if args.reuse_osrl else ""), "",
             "| metric | ours (mean ± std) | OSRL (mean ± std) | difference | 2 SE | same within seed noise |",
             "|---|---|---|---|---|---|"]
    for metric, s in summary.items():
        lines.append(f"| {metric} | {s['ours_mean']:.3f} ± {s['ours_std']:.3f} | {s['osrl_mean']:.3f} ± "
                     f"{s['osrl_std']:.3f} | {s['difference']:+.3f} | {s['two_se']:.3f} | "
                     f"{'yes' if s['within_seed_noise'] else 'NO'} |")
    ours_ms = np.mean([r["ours"]["ms_per_update"] for r in rows])  # type: ignore[index]
    osrl_ms = np.mean([r["osrl"]["ms_per_update"] for r in rows])  # type: ignore[index]
    if args.reuse_osrl is None:
        lines += ["", f"Training wall time per update in these runs (whole loop, incl. logging): ours {ours_ms:.0f} ms, "
                  f"OSRL {osrl_ms:.0f} ms (ratio {osrl_ms / ours_ms:.2f}x). For steady-state speed see learner_speed."]
    else:
        lines += ["", f"Training wall time per update: ours {ours_ms:.0f} ms here; OSRL's runs were reused from "
                  "another run (possibly other threads or load), so no ratio. For speed see learner_speed."]
    atomic_write_text(RESULTS / "osrl_side_by_side.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
