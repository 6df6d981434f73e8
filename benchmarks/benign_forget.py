"""The benign-forget control (docs/protocol.md): unlearning a random clean 10% of the episodes from a
CLEAN model must cost little reward (at most 5%) and keep it safe.

Reads a `benchmarks/regime.py` results file. For each of its training seeds s, regime.py already
trained "clean-s" (every episode) and "retrain-s" (the same dataset without a random 10% of its
episodes, drawn per seed): "retrain-s" is the exact unlearning of that 10% from "clean-s". Each
method unlearns that 10% from "clean-s" with `--steps` updates, for each of `--unlearn-seeds`, and
is evaluated like dev_unlearning.py (20 episodes, the task's start-state perturbation).

Reported per method: runs that stay safe with a reward drop of at most 5% of the clean model's
("benign pass", Wilson 95% interval), the mean drop, joint success against that seed's exact
retraining (safe and reward >= 90% of it), and wall time as a fraction of one single-model retraining.

  .venv/bin/python benchmarks/benign_forget.py --split report \\
      --regime report-b3-cpess-phi45-tau05-h64-budget08-ln-train8-relabel-pool1 --tag report-benign-1000

Writes benchmarks/results/<split>_unlearning/<tag>.json and .md (stamped with commit, command, host).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dev_unlearning import (  # noqa: E402
    JOINT_REWARD_FRACTION,
    add_unlearning_arguments,
    check_split,
    checked_settings,
    evaluate_normalised,
    load_regime,
    single_retrain_seconds,
)
from regime import random_forget_mask, regime_dataset  # noqa: E402
from stamp import run_stamp, write_results  # noqa: E402

from saferule_core.algos.checkpoint import load_learner  # noqa: E402
from saferule_core.eval.stats import wilson_interval  # noqa: E402
from saferule_core.tasks.spec import get_task  # noqa: E402
from saferule_core.unlearning.api import UnlearnConfig, unlearn  # noqa: E402
from saferule_core.unlearning.methods import APPROXIMATE_METHODS  # noqa: E402

MAX_REWARD_DROP = 0.05   # the protocol's benign-forget bound, as a fraction of the clean model's reward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_unlearning_arguments(parser, steps=1000)
    parser.add_argument("--methods", nargs="+", default=["safe_rule"], choices=APPROXIMATE_METHODS)
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    regime = load_regime(parser, args.regime)
    seeds: list[int] = regime["seeds"]
    check_split(parser, args.split, seeds)
    run_dir = ROOT / regime["run_dir"]
    if not run_dir.is_dir():
        parser.error(f"the regime's model folder {run_dir} does not exist here")
    sections = checked_settings(parser, args.unlearn_set, args.steps)

    stamped = run_stamp("benchmarks/benign_forget.py", argv)
    torch.set_num_threads(args.threads)
    spec = get_task(regime["task"])
    limit = float(regime.get("eval_cost_limit", 10.0))
    dataset = regime_dataset(regime)
    single_seconds = single_retrain_seconds(
        regime, dataset.subset_episodes(~random_forget_mask(dataset, seeds[0])), args.threads)
    print(f"one retraining: {single_seconds:.0f} s as a single model", flush=True)

    cases: list[dict[str, Any]] = []
    for seed in seeds:
        mask = random_forget_mask(dataset, seed)
        model = load_learner(run_dir / f"clean-s{seed}")
        clean = evaluate_normalised(model, spec, args.episodes, limit)
        retrained = evaluate_normalised(load_learner(run_dir / f"retrain-s{seed}"), spec, args.episodes, limit)
        case: dict[str, Any] = {"seed": seed, "forget_episodes": int(mask.sum()), "clean": clean,
                                "retrain": retrained, "methods": {}}
        for method in args.methods:
            runs = []
            for unlearn_seed in args.unlearn_seeds:
                config = UnlearnConfig(steps=args.steps, seed=unlearn_seed, num_threads=args.threads, **sections)
                unlearned, report = unlearn(model, dataset, mask, method, config)
                outcome = evaluate_normalised(unlearned, spec, args.episodes, limit)
                safe = outcome["normalized_cost"] <= 1.0
                drop = 1.0 - outcome["normalized_reward"] / clean["normalized_reward"]
                runs.append({**outcome, "unlearn_seed": unlearn_seed, "safe": safe, "reward_drop": drop,
                             "benign_pass": safe and drop <= MAX_REWARD_DROP,
                             "joint": safe and outcome["normalized_reward"]
                             >= JOINT_REWARD_FRACTION * retrained["normalized_reward"],
                             "wall_s": report.wall_time_s, "wall_fraction_single": report.wall_time_s / single_seconds})
                print(f"  s{seed} {method:<12} u{unlearn_seed}: reward {outcome['normalized_reward']:6.3f} cost "
                      f"{outcome['normalized_cost']:5.2f} drop {drop:+.1%}  (clean {clean['normalized_reward']:.3f} / "
                      f"{clean['normalized_cost']:.2f}; retrain {retrained['normalized_reward']:.3f} / "
                      f"{retrained['normalized_cost']:.2f})", flush=True)
            case["methods"][method] = runs
        cases.append(case)

    summary: dict[str, Any] = {}
    for method in args.methods:
        runs = [run for case in cases for run in case["methods"][method]]
        passed = sum(run["benign_pass"] for run in runs)
        summary[method] = {"runs": len(runs), "safe": sum(run["safe"] for run in runs), "benign_pass": passed,
                           "benign_pass_interval": wilson_interval(passed, len(runs)),
                           "joint": sum(run["joint"] for run in runs),
                           "mean_reward_drop": float(np.mean([run["reward_drop"] for run in runs])),
                           "mean_wall_fraction_single": float(np.mean([run["wall_fraction_single"] for run in runs]))}
    payload = {**stamped, "split": args.split, "regime": args.regime, "steps": args.steps,
               "unlearn_seeds": args.unlearn_seeds, "unlearn_settings": sections, "episodes": args.episodes,
               "max_reward_drop": MAX_REWARD_DROP, "retrain_seconds_single": single_seconds,
               "summary": summary, "cases": cases}
    write_results(ROOT / "benchmarks" / "results" / f"{args.split}_unlearning", args.tag, payload, render_markdown)
    return 0


def render_markdown(payload: dict[str, Any]) -> str:
    lines = [f"# Benign-forget control, {payload['split']} split `{payload['command']}`", "",
             f"Regime `{payload['regime']}`: each clean model unlearns a random clean 10% of the episodes (the 10% its "
             f"regime's retrain model was trained without) with {payload['steps']} updates, unlearning seeds "
             f"{payload['unlearn_seeds']}, settings {json.dumps(payload['unlearn_settings'])}. Benign pass: safe and "
             f"reward drop <= {payload['max_reward_drop']:.0%} of the clean model's. One retraining: "
             f"{payload['retrain_seconds_single']:.0f} s as a single model. Commit {payload['commit']}"
             f"{' (dirty)' if payload['git_dirty'] else ''}, host {payload['host']}.", "",
             "| method | safe | benign pass (95% CI) | mean reward drop | joint vs retraining | wall / single retrain |",
             "|---|---|---|---|---|---|"]
    for method, s in payload["summary"].items():
        lo, hi = s["benign_pass_interval"]
        lines.append(f"| {method} | {s['safe']}/{s['runs']} | {s['benign_pass']}/{s['runs']} ({lo:.2f}-{hi:.2f}) | "
                     f"{s['mean_reward_drop']:+.1%} | {s['joint']}/{s['runs']} | {s['mean_wall_fraction_single']:.3f} |")
    methods = list(payload["summary"])
    lines += ["", "| seed | clean | retrain | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]

    def pair(d: dict[str, Any]) -> str:
        return f"{d['normalized_reward']:.3f} / {d['normalized_cost']:.2f}"

    for case in payload["cases"]:
        cells = [", ".join(pair(run) + (" P" if run["benign_pass"] else "") for run in case["methods"][m])
                 for m in methods]
        lines.append(f"| {case['seed']} | {pair(case['clean'])} | {pair(case['retrain'])} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: normalised reward / normalised cost; P marks a benign pass."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
