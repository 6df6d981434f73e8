"""Does each poisoning attack make each learner unsafe? Clean vs relabel / inject / trigger.

For every learner (BC-Safe, BCQ-Lag, CPQ) and seed, one model is trained on the clean dataset of a
Bullet task and one on each poisoned copy (10% of episodes poisoned), and every model is run in the
simulator (DSRL normalised reward and cost at thresholds 10/20/40; the trigger attack's models are
evaluated with the trigger stamped on the observations, which is what a backdoor is for). An attack
does its job when the poisoned model's normalised cost at threshold 10 exceeds 1 where the clean
model's stays at or below 1.

The datasets, attacks, training settings and evaluation are those of the unlearning benchmark's
profile (benchmarks/unlearning.py), and so is the cache: BCQ-Lag models trained by one script are
reused by the other.

  .venv/bin/python benchmarks/attack_table.py                              # BallRun, seed 0, quick
  .venv/bin/python benchmarks/attack_table.py --seeds 0 1 2 --algos bcq_lag cpq

Writes benchmarks/results/attacks.{json,md,png}.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402
from unlearning import ATTACKS, POISON_RATE, PROFILES, THRESHOLDS, Bench, Settings, summary  # noqa: E402

from saferule_core.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from saferule_core.tasks.spec import get_task  # noqa: E402

ALGOS: tuple[str, ...] = ("bc_safe", "bcq_lag", "cpq")


def run_algo(bench: Bench, task: str, seed: int, attacks: Sequence[str]) -> list[dict[str, Any]]:
    clean = bench.dataset("clean", task, bench.s.profile.episodes[task], seed)
    clean_model, clean_seconds, clean_key = bench.model(f"{task}-s{seed}-clean", clean, seed)
    bench.bar.update(1)
    rows = []
    for attack in attacks:
        trigger = bench.trigger(clean) if attack == "trigger" else None
        poison = bench.poisoned(attack, clean, task, seed)
        model, seconds, key = bench.model(f"{task}-s{seed}-{attack}-poisoned", poison.dataset, seed)
        base = {"algo": bench.s.algo, "task": task, "seed": seed, "attack": attack,
                "poisoned_episodes": int(poison.episode_mask.sum()), "episodes": poison.dataset.num_episodes}
        # the clean model is evaluated the way its attack's model is (trigger on for the backdoor)
        rows.append({**base, "model": "clean", "train_seconds": clean_seconds,
                     **summary(bench.evaluation(clean_model, task, seed, trigger, clean_key))})
        rows.append({**base, "model": "poisoned", "train_seconds": seconds,
                     **summary(bench.evaluation(model, task, seed, trigger, key))})
        bench.bar.update(1)
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (algo, attack): clean and poisoned mean/std over seeds, and the per-seed verdicts."""
    out = []
    keys = sorted({(r["algo"], r["task"], r["attack"]) for r in rows})
    for algo, task, attack in keys:
        entry: dict[str, Any] = {"algo": algo, "task": task, "attack": attack}
        per_model = {}
        for model in ("clean", "poisoned"):
            members = sorted((r for r in rows if (r["algo"], r["task"], r["attack"], r["model"]) ==
                              (algo, task, attack, model)), key=lambda r: r["seed"])
            per_model[model] = members
            entry[f"{model}_reward"] = float(np.mean([m["normalized_reward"] for m in members]))
            entry[f"{model}_reward_std"] = float(np.std([m["normalized_reward"] for m in members]))
            for k in THRESHOLDS:
                values = [m["normalized_cost"][f"{k:g}"] for m in members]
                entry[f"{model}_cost@{k:g}"] = float(np.mean(values))
                entry[f"{model}_cost@{k:g}_std"] = float(np.std(values))
        pairs = list(zip(per_model["clean"], per_model["poisoned"]))
        entry["seeds"] = len(pairs)
        entry["attack_works_seeds"] = sum(c["normalized_cost"]["10"] <= 1.0 < p["normalized_cost"]["10"]
                                          for c, p in pairs)
        entry["clean_safe_seeds"] = sum(c["normalized_cost"]["10"] <= 1.0 for c, _ in pairs)
        out.append(entry)
    return out


def markdown(summary_rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# Poisoning attacks against the offline safe RL learners", "",
             f"Task(s) {', '.join(meta['tasks'])}, seeds {meta['seeds']}, poison rate {POISON_RATE:.0%}, "
             f"profile `{meta['profile']}` of benchmarks/unlearning.py ({meta['train_steps']} training updates, "
             f"batch {meta['batch_size']}, {meta['precision']}, cost limit {meta['cost_limit']:g}; BCQ-Lag with "
             f"phi {meta['bcq_lag_phi']}), {meta['eval_episodes']} evaluation episodes per model, trigger-attack "
             "models (and the clean model in that row) evaluated with the trigger on. Normalised reward and "
             "cost (threshold 10; <= 1 is safe), mean +- std over seeds. `works` = seeds where the clean model "
             "is safe and the poisoned one is not.", "",
             "| learner | task | attack | clean reward | clean cost @10 | poisoned reward | poisoned cost @10 | "
             "poisoned cost @20 | works |", "|---|---|---|---|---|---|---|---|---|"]

    def cell(row: dict[str, Any], name: str) -> str:
        return f"{row[name]:.2f} +- {row[name + '_std']:.2f}" if row["seeds"] > 1 else f"{row[name]:.2f}"

    for row in summary_rows:
        lines.append(f"| {row['algo']} | {row['task']} | {row['attack']} | {cell(row, 'clean_reward')} | "
                     f"{cell(row, 'clean_cost@10')} | {cell(row, 'poisoned_reward')} | {cell(row, 'poisoned_cost@10')} | "
                     f"{cell(row, 'poisoned_cost@20')} | {row['attack_works_seeds']}/{row['seeds']} |")
    return "\n".join(lines) + "\n"


def plot(summary_rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    axis = fig.add_subplot(1, 1, 1)
    labels = [f"{r['algo']}\n{r['attack']}" for r in summary_rows]
    x = np.arange(len(summary_rows))
    axis.bar(x - 0.2, [r["clean_cost@10"] for r in summary_rows], 0.4,
             yerr=[r["clean_cost@10_std"] for r in summary_rows], color="tab:green", label="clean")
    axis.bar(x + 0.2, [r["poisoned_cost@10"] for r in summary_rows], 0.4,
             yerr=[r["poisoned_cost@10_std"] for r in summary_rows], color="tab:red", label="poisoned")
    axis.axhline(1.0, color="black", linestyle="--", linewidth=1)
    axis.set_xticks(x)
    axis.set_xticklabels(labels, fontsize=8)
    axis.set_ylabel("normalised cost @ threshold 10")
    axis.set_title("clean vs poisoned training data (dashed: the cost limit)")
    axis.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["BallRun"])
    parser.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--cost-limit", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "unlearning-bench",
                        help="cache shared with benchmarks/unlearning.py (git-ignored)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    for task in args.tasks:
        get_task(task)
        if task not in profile.episodes:
            parser.error(f"no dataset size for task {task} in profile {args.profile}")
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    units = len(args.algos) * len(args.tasks) * len(args.seeds) * (1 + len(args.attacks))
    with tqdm(total=units, desc="attack table", unit="stage", dynamic_ncols=True) as bar:
        for algo in args.algos:
            settings = Settings(profile=profile, algo=algo, cost_limit=args.cost_limit, bonus_factor=1.0,
                                relabel_pool=2.0, unlearn={}, threads=args.threads)
            bench = Bench(settings, args.work_dir / algo, bar)
            for task in args.tasks:
                for seed in args.seeds:
                    rows += run_algo(bench, task, seed, args.attacks)
    summary_rows = aggregate(rows)
    meta = {"profile": args.profile, "tasks": args.tasks, "seeds": args.seeds, "algos": args.algos,
            "train_steps": profile.train_steps, "batch_size": profile.batch_size, "precision": profile.precision,
            "cost_limit": args.cost_limit, "eval_episodes": profile.eval_episodes,
            "bcq_lag_phi": profile.algo_overrides.get("bcq_lag", {}).get("phi"), "poison_rate": POISON_RATE,
            "seconds": round(time.perf_counter() - began, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "attacks.json", {"meta": meta, "summary": summary_rows, "runs": rows})
    text = markdown(summary_rows, meta)
    atomic_write_text(args.out / "attacks.md", text)
    plot(summary_rows, args.out / "attacks.png")
    print(text)
    print(f"wrote {args.out / 'attacks.json'}, .md and .png in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
