"""Unlearning on a regime run's poisoned models: each method against exact retraining.

Reads a `benchmarks/regime.py --attacks ...` results file (its run folder, seeds, learner settings
and update count). For every training seed s of the attack:
  * the poisoning is redone exactly as regime.py did it (same dataset, same attack seed), so the
    forget set is the poisoned episodes;
  * "retrain": the learner retrained on the poisoned dataset minus the forget set, with the regime's
    settings and update count; all seeds as one stack (cached under runs/dev_unlearning/);
  * each method unlearns the forget set from the poisoned model (`saferule_core.unlearning.unlearn`)
    with `--steps` updates, for each of `--unlearn-seeds`.
Every policy is evaluated like regime.py's (20 episodes, the task's start-state perturbation).

A case is valid when the clean model of that seed is safe and the poisoned one is not. Joint success
(issue 14's primary metric): normalised cost <= 1 and normalised reward >= 90% of that seed's
retrained reward. Reported per method: safe and joint-success counts over the valid cases with
Wilson 95% intervals, mean reward and cost, and wall time as a fraction of one retraining's.

  .venv/bin/python benchmarks/dev_unlearning.py --regime dev-b2-constrained-pess-phi25-tau05-h64 \\
      --tag dev-safe-rule-500 --methods safe_rule finetune --steps 500

Writes benchmarks/results/<split>_unlearning/<tag>.json and .md (stamped with commit, command, host).
--split dev (the default) takes dev seeds (>= 100) only, and settings are chosen there; --split report
takes the report seeds (0-99) only, with settings frozen and declared in docs/protocol.md beforehand.
"""

from __future__ import annotations

import argparse
import json
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

from regime import parse_settings, poison, regime_dataset  # noqa: E402
from stamp import run_stamp, write_results  # noqa: E402

from saferule_core.algos.checkpoint import load_learner, policy_function  # noqa: E402
from saferule_core.algos.stacked import StackTrainConfig, build_stack, train_stack  # noqa: E402
from saferule_core.algos.trainer import TrainConfig, fit  # noqa: E402
from saferule_core.errors import SafeRuleError  # noqa: E402
from saferule_core.eval.evaluate import evaluate_policy  # noqa: E402
from saferule_core.eval.stats import wilson_interval  # noqa: E402
from saferule_core.io_utils import atomic_write_json  # noqa: E402
from saferule_core.tasks.spec import TaskSpec, get_task  # noqa: E402
from saferule_core.unlearning.api import UnlearnConfig, unlearn  # noqa: E402
from saferule_core.unlearning.methods import APPROXIMATE_METHODS  # noqa: E402

REGIME_RESULTS = ROOT / "benchmarks" / "results" / "regime"
SPLIT_SEEDS = {"dev": range(100, 1000), "report": range(0, 100)}   # docs/protocol.md's splits
WORK = ROOT / "runs" / "dev_unlearning"
RETRAIN_SEED_OFFSET = 40_000          # retrained models' seeds: distinct from every regime model's
SINGLE_PROBE_STEPS = 400              # a single-model retraining is timed over this many updates...
SINGLE_PROBE_WARMUP = 100             # ...after these (steady state), and scaled to the regime's update count
JOINT_REWARD_FRACTION = 0.9


def add_unlearning_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """The options every unlearning benchmark on a regime run takes (dev_unlearning.py, benign_forget.py)."""
    parser.add_argument("--regime", required=True, help="tag of a regime.py results file")
    parser.add_argument("--split", choices=sorted(SPLIT_SEEDS), default="dev",
                        help="dev: tuning seeds (>= 100); report: the claim's seeds (0-99), frozen settings only")
    parser.add_argument("--tag", required=True, help="name of this run's results files")
    parser.add_argument("--steps", type=int, default=steps, help="unlearning updates per method")
    parser.add_argument("--unlearn-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--unlearn-set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="unlearning settings, e.g. safe_rule.cost_weight=5 batch_size=512")


def load_regime(parser: argparse.ArgumentParser, tag: str) -> dict[str, Any]:
    """The regime.py results file `tag` (a parser error when there is none)."""
    regime_file = REGIME_RESULTS / f"{tag}.json"
    if not regime_file.is_file():
        parser.error(f"no regime results {regime_file}")
    regime: dict[str, Any] = json.loads(regime_file.read_text())
    return regime


def check_split(parser: argparse.ArgumentParser, split: str, seeds: Any) -> None:
    outside = sorted(seed for seed in seeds if seed not in SPLIT_SEEDS[split])
    if outside:
        parser.error(f"seeds {' '.join(map(str, outside))} are not {split}-split seeds "
                     f"({SPLIT_SEEDS[split].start}-{SPLIT_SEEDS[split].stop - 1})")


def checked_settings(parser: argparse.ArgumentParser, pairs: list[str], steps: int) -> dict[str, Any]:
    """--unlearn-set as UnlearnConfig sections, checked now (a parser error, before any work)."""
    try:
        sections = unlearn_settings(pairs)
        UnlearnConfig(steps=steps, **sections)
    except (SafeRuleError, TypeError) as err:
        parser.error(str(err))
    return sections


def evaluate_normalised(learner: Any, spec: TaskSpec, episodes: int, limit: float) -> dict[str, float]:
    """A learner's policy in the simulator (evaluation seed 1, the task's start-state perturbation):
    normalised reward and normalised cost at `limit`. The learner is left in training mode."""
    learner.train_mode(False)
    result = evaluate_policy(policy_function(learner), spec, episodes=episodes, seed=1, thresholds=(limit,))
    learner.train_mode(True)
    return {"normalized_reward": result.normalized_reward, "normalized_cost": result.normalized_costs[limit]}


def unlearn_settings(pairs: list[str]) -> dict[str, Any]:
    """`section.key=value` pairs (e.g. safe_rule.cost_weight=5) as UnlearnConfig keyword sections."""
    sections: dict[str, Any] = {}
    for key, value in parse_settings(pairs).items():
        section, dot, name = key.partition(".")
        if dot:
            sections.setdefault(section, {})[name] = value
        else:
            sections[section] = value
    return sections


def single_retrain_seconds(regime: dict[str, Any], retained: Any, threads: int) -> float:
    """Wall time of retraining ONE model (as a user would, not as part of a stack): the steady-state
    time per update of a fresh single learner on the retained data, times the regime's update count."""
    marks: dict[int, float] = {}

    def on_step(step: int, _learner: Any) -> None:
        if step in (SINGLE_PROBE_WARMUP, SINGLE_PROBE_STEPS):
            marks[step] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="dev-unlearning-probe-") as tmp:
        fit(regime["algo"], retained, Path(tmp) / "probe",
            TrainConfig(steps=SINGLE_PROBE_STEPS, batch_size=regime["batch_size"], seed=RETRAIN_SEED_OFFSET,
                        num_threads=threads, log_every=SINGLE_PROBE_STEPS, checkpoint_every=0, progress=False),
            overrides=regime["settings"], callback=on_step)
    per_update = (marks[SINGLE_PROBE_STEPS] - marks[SINGLE_PROBE_WARMUP]) / (SINGLE_PROBE_STEPS - SINGLE_PROBE_WARMUP)
    return per_update * regime["steps"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_unlearning_arguments(parser, steps=500)
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="the regime run's model folder (default: the one its results file names)")
    parser.add_argument("--attack", default="relabel")
    parser.add_argument("--methods", nargs="+", default=["safe_rule", "finetune"], choices=APPROXIMATE_METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="unlearn only these training seeds of the regime (default: all of them); a tuning "
                             "round names the dev seeds only (exact retraining still covers every seed, cached)")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    regime = load_regime(parser, args.regime)
    unknown = sorted(set(args.seeds or []) - set(regime["seeds"]))
    if unknown:
        parser.error(f"--seeds {' '.join(map(str, unknown))}: not among the regime's seeds {regime['seeds']}")
    unlearned_seeds = set(args.seeds or regime["seeds"])
    check_split(parser, args.split, unlearned_seeds)
    run_dir = args.run_dir or (ROOT / regime["run_dir"] if "run_dir" in regime else None)
    if run_dir is None or not run_dir.is_dir():
        parser.error("the regime results file names no run folder that exists here; give --run-dir")
    sections = checked_settings(parser, args.unlearn_set, args.steps)

    stamped = run_stamp("benchmarks/dev_unlearning.py", argv)
    torch.set_num_threads(args.threads)
    spec = get_task(regime["task"])
    # Evaluate at the cost limit regime.py evaluated at, which the learner's own (training) cost_limit
    # setting may undercut; results files from before "eval_cost_limit" was recorded all used 10.
    limit = float(regime.get("eval_cost_limit", 10.0))
    seeds: list[int] = regime["seeds"]
    dataset = regime_dataset(regime)
    poisonings = {seed: poison(dataset, args.attack, seed, regime.get("attack_settings")) for seed in seeds}
    by_label = {m["label"]: m for m in regime["models"]}

    def evaluate(learner: Any) -> dict[str, float]:
        return evaluate_normalised(learner, spec, args.episodes, limit)

    retrain_dirs = [WORK / args.regime / f"retrain-{args.attack}-s{seed}" for seed in seeds]
    retrain_meta = WORK / args.regime / f"retrain-{args.attack}.json"
    if not retrain_meta.is_file():
        retained = [poisonings[s].dataset.subset_episodes(~poisonings[s].episode_mask) for s in seeds]
        stack_seeds = [s + RETRAIN_SEED_OFFSET for s in seeds]
        print(f"retraining {len(seeds)} models on the retained data as one stack, {regime['steps']} updates", flush=True)
        began = time.perf_counter()
        stack = build_stack(regime["algo"], retained, stack_seeds, regime["settings"], regime["batch_size"])
        train_stack(stack, retained, stack_seeds, retrain_dirs,
                    StackTrainConfig(steps=regime["steps"], batch_size=regime["batch_size"], num_threads=args.threads,
                                     log_every=max(1, regime["steps"] // 100), checkpoint_every=0))
        atomic_write_json(retrain_meta, {"seconds_per_model": (time.perf_counter() - began) / len(seeds),
                                         "models": len(seeds)})
    retrain_seconds = float(json.loads(retrain_meta.read_text())["seconds_per_model"])
    single_seconds = single_retrain_seconds(
        regime, poisonings[seeds[0]].dataset.subset_episodes(~poisonings[seeds[0]].episode_mask), args.threads)
    print(f"one retraining: {retrain_seconds:.0f} s per model in the stack, {single_seconds:.0f} s as a single "
          f"model (timed over {SINGLE_PROBE_STEPS - SINGLE_PROBE_WARMUP} updates)", flush=True)

    cases: list[dict[str, Any]] = []
    for seed, retrain_dir in zip(seeds, retrain_dirs):
        if seed not in unlearned_seeds:
            continue
        clean = by_label[f"clean-s{seed}"]
        poisoned = by_label[f"{args.attack}-s{seed}"]
        retrained = evaluate(load_learner(retrain_dir))
        case: dict[str, Any] = {
            "seed": seed, "valid": bool(clean["safe"] and not poisoned["safe"]),
            "forget_episodes": int(poisonings[seed].episode_mask.sum()),
            "clean": {k: clean[k] for k in ("normalized_reward", "normalized_cost")},
            "poisoned": {k: poisoned[k] for k in ("normalized_reward", "normalized_cost")},
            "retrain": {**retrained, "safe": retrained["normalized_cost"] <= 1.0}, "methods": {}}
        model = load_learner(run_dir / f"{args.attack}-s{seed}")
        for method in args.methods:
            runs = []
            for unlearn_seed in args.unlearn_seeds:
                config = UnlearnConfig(steps=args.steps, seed=unlearn_seed, num_threads=args.threads, **sections)
                unlearned, report = unlearn(model, poisonings[seed].dataset, poisonings[seed].episode_mask,
                                            method, config)
                outcome = evaluate(unlearned)
                safe = outcome["normalized_cost"] <= 1.0
                joint = safe and outcome["normalized_reward"] >= JOINT_REWARD_FRACTION * retrained["normalized_reward"]
                runs.append({**outcome, "unlearn_seed": unlearn_seed, "safe": safe, "joint": joint,
                             "wall_s": report.wall_time_s, "updates": report.updates,
                             "wall_fraction": report.wall_time_s / retrain_seconds,
                             "wall_fraction_single": report.wall_time_s / single_seconds,
                             "selected_step": report.selected_step})
                print(f"  s{seed} {method:<12} u{unlearn_seed}: reward {outcome['normalized_reward']:6.3f} "
                      f"cost {outcome['normalized_cost']:5.2f}  (retrain {retrained['normalized_reward']:.3f} / "
                      f"{retrained['normalized_cost']:.2f}; poisoned {poisoned['normalized_reward']:.3f} / "
                      f"{poisoned['normalized_cost']:.2f})", flush=True)
            case["methods"][method] = runs
        cases.append(case)

    summary = summarise(cases, args.methods)
    payload = {**stamped, "split": args.split, "regime": args.regime, "attack": args.attack, "steps": args.steps,
               "unlearn_seeds": args.unlearn_seeds, "unlearn_settings": sections, "episodes": args.episodes,
               "retrain_seconds_per_model": retrain_seconds, "retrain_seconds_single": single_seconds,
               "summary": summary, "cases": cases}
    write_results(ROOT / "benchmarks" / "results" / f"{args.split}_unlearning", args.tag, payload, render_markdown)
    return 0


def summarise(cases: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    valid = [c for c in cases if c["valid"]]
    summary: dict[str, Any] = {"valid_cases": len(valid), "cases": len(cases),
                               "retrain_safe": sum(c["retrain"]["safe"] for c in valid)}
    for method in methods:
        runs = [run for c in valid for run in c["methods"][method]]
        safe, joint = sum(r["safe"] for r in runs), sum(r["joint"] for r in runs)
        summary[method] = {
            "runs": len(runs), "safe": safe, "joint": joint,
            "safe_interval": wilson_interval(safe, len(runs)), "joint_interval": wilson_interval(joint, len(runs)),
            "mean_reward": float(np.mean([r["normalized_reward"] for r in runs])) if runs else float("nan"),
            "mean_cost": float(np.mean([r["normalized_cost"] for r in runs])) if runs else float("nan"),
            "mean_wall_fraction": float(np.mean([r["wall_fraction"] for r in runs])) if runs else float("nan"),
            "mean_wall_fraction_single": float(np.mean([r["wall_fraction_single"] for r in runs]))
            if runs else float("nan")}
    return summary


def render_markdown(payload: dict[str, Any]) -> str:
    s = payload["summary"]
    lines = [f"# {payload.get('split', 'dev').capitalize()}-split unlearning `{payload['command']}`", "",
             f"Regime `{payload['regime']}`, attack {payload['attack']}, {payload['steps']} unlearning updates, "
             f"unlearning seeds {payload['unlearn_seeds']}, settings {json.dumps(payload['unlearn_settings'])}. "
             f"Valid cases (clean safe, poisoned unsafe): {s['valid_cases']}/{s['cases']}; retraining safe in "
             f"{s['retrain_safe']} of them. One retraining: {payload['retrain_seconds_per_model']:.0f} s per model "
             f"in a stack, {payload['retrain_seconds_single']:.0f} s as a single model. Commit {payload['commit']}"
             f"{' (dirty)' if payload['git_dirty'] else ''}, "
             f"host {payload['host']}.", "",
             "| method | safe | joint success (95% CI) | mean reward | mean cost | wall / retrain (stacked) | "
             "wall / retrain (single) |",
             "|---|---|---|---|---|---|---|"]
    for method, m in s.items():
        if not isinstance(m, dict):
            continue
        lo, hi = m["joint_interval"]
        lines.append(f"| {method} | {m['safe']}/{m['runs']} | {m['joint']}/{m['runs']} ({lo:.2f}-{hi:.2f}) | "
                     f"{m['mean_reward']:.3f} | {m['mean_cost']:.2f} | {m['mean_wall_fraction']:.3f} | "
                     f"{m['mean_wall_fraction_single']:.3f} |")
    lines += ["", "| seed | valid | clean | poisoned | retrain | " +
              " | ".join(m for m in s if isinstance(s[m], dict)) + " |",
              "|---|---|---|---|---|" + "---|" * sum(isinstance(v, dict) for v in s.values())]

    def pair(d: dict[str, Any]) -> str:
        return f"{d['normalized_reward']:.3f} / {d['normalized_cost']:.2f}"

    for c in payload["cases"]:
        cells = [", ".join(pair(r) + (" J" if r["joint"] else "") for r in c["methods"][m])
                 for m in s if isinstance(s[m], dict)]
        lines.append(f"| {c['seed']} | {'yes' if c['valid'] else 'no'} | {pair(c['clean'])} | {pair(c['poisoned'])} | "
                     f"{pair(c['retrain'])} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: normalised reward / normalised cost; J marks joint success."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
