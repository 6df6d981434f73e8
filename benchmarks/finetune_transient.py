"""How a poisoned model moves when it simply keeps training on the retained data (dev split).

The diagnosis behind Safe-RULE's stopped policies (docs/safe_rule.md, round 4): take a regime run's
poisoned model, keep training it with the learner's own update on the poisoned dataset minus the
forget set (no forget terms, no checkpoint choice), and evaluate the policy at a ladder of update
counts, next to the model retrained from scratch on the same data. Variants change the starting
point only:

  plain          the poisoned model as it is
  reset-critics  every critic member (and its target) re-initialised first (Safe-RULE's reset_critics=all)
  reset-cost     only the cost critics re-initialised

Per mark: normalised reward and cost (20 episodes, the task's start-state perturbation, as
regime.py), the Lagrange multiplier and the batch means of Q_r and Q_c of the policy.

  .venv/bin/python benchmarks/finetune_transient.py --regime dev-b3-cpess-phi45-tau05-h64-budget08-ln-train8-relabel \\
      --seed 104 --marks 200 500 1000 2000 3000 --variants plain reset-critics

Writes benchmarks/results/dev_unlearning/transient-<tag>.json and .md (stamped with commit, command, host).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dev_unlearning import REGIME_RESULTS, RESULTS, WORK, evaluate_normalised  # noqa: E402
from regime import poison, regime_dataset  # noqa: E402
from stamp import run_stamp, write_results  # noqa: E402

from saferule_core.algos.batch import BatchSampler  # noqa: E402
from saferule_core.algos.checkpoint import load_learner  # noqa: E402
from saferule_core.tasks.spec import get_task  # noqa: E402
from saferule_core.unlearning.parts import model_parts  # noqa: E402

VARIANTS = ("plain", "reset-critics", "reset-cost")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", required=True, help="tag of a regime.py results file run with --attacks")
    parser.add_argument("--attack", default="relabel")
    parser.add_argument("--seed", type=int, required=True, help="training seed of the case")
    parser.add_argument("--marks", type=int, nargs="+", default=[200, 500, 1000, 2000, 3000],
                        help="update counts at which the policy is evaluated")
    parser.add_argument("--variants", nargs="+", default=["plain", "reset-critics"], choices=VARIANTS)
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the batch sampler and the resets")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default=None, help="results file name (default: <regime>-s<seed>)")
    args = parser.parse_args(argv)
    if sorted(args.marks) != args.marks or args.marks[0] < 1:
        parser.error("--marks must be increasing positive update counts")
    argv = list(sys.argv[1:] if argv is None else argv)
    regime_file = REGIME_RESULTS / f"{args.regime}.json"
    if not regime_file.is_file():
        parser.error(f"no regime results {regime_file}")
    regime = json.loads(regime_file.read_text())
    run_dir = ROOT / regime["run_dir"]
    retrain_dir = WORK / args.regime / f"retrain-{args.attack}-s{args.seed}"
    if not retrain_dir.is_dir():
        parser.error(f"no retrained model {retrain_dir}: run benchmarks/dev_unlearning.py on this regime first")
    stamped = run_stamp("benchmarks/finetune_transient.py", argv)
    torch.set_num_threads(args.threads)
    spec = get_task(regime["task"])
    limit = float(regime.get("eval_cost_limit", 10.0))
    dataset = regime_dataset(regime)
    poisoning = poison(dataset, args.attack, args.seed, regime.get("attack_settings"))
    retained = poisoning.dataset.subset_episodes(~poisoning.episode_mask)

    def evaluate(learner: Any) -> dict[str, float]:
        return evaluate_normalised(learner, spec, args.episodes, limit)

    reference = {"retrain": evaluate(load_learner(retrain_dir)),
                 "poisoned": evaluate(load_learner(run_dir / f"{args.attack}-s{args.seed}"))}
    runs: dict[str, list[dict[str, float]]] = {}
    for variant in args.variants:
        learner = load_learner(run_dir / f"{args.attack}-s{args.seed}")
        parts = model_parts(learner)
        generator = torch.Generator().manual_seed(args.sample_seed)
        if variant != "plain":
            assert parts.cost_members is not None
            parts.reset_critic_members(parts.cost_members if variant == "reset-cost" else slice(None), generator)
        sampler = BatchSampler(learner.training_data(retained, learner.config), learner.info.stats,
                               regime["batch_size"], learner.device, args.sample_seed)
        learner.train_mode(True)
        rows, done = [], 0
        for mark in args.marks:
            metrics: dict[str, Any] = {}
            while done < mark:
                metrics = learner.update(sampler.sample())
                done += 1
            row = {"updates": mark, **evaluate(learner),
                   **{key: float(metrics[key]) for key in ("lagrange_multiplier", "q_reward", "q_cost") if key in metrics}}
            rows.append(row)
            print(f"{variant:<14} {mark:>6}: reward {row['normalized_reward']:.3f} cost {row['normalized_cost']:.2f} "
                  f"lambda {row.get('lagrange_multiplier', float('nan')):.2f} Q_c {row.get('q_cost', float('nan')):.2f} "
                  f"Q_r {row.get('q_reward', float('nan')):.1f}", flush=True)
        runs[variant] = rows

    payload = {**stamped, "regime": args.regime, "attack": args.attack, "seed": args.seed,
               "sample_seed": args.sample_seed, "episodes": args.episodes, "reference": reference, "runs": runs}
    tag = args.tag or f"{args.regime}-s{args.seed}"
    write_results(RESULTS, f"transient-{tag}", payload, render_markdown)
    return 0


def render_markdown(payload: dict[str, Any]) -> str:
    ref = payload["reference"]
    lines = [f"# Fine-tuning transient `{payload['command']}`", "",
             f"Regime {payload['regime']}, attack {payload['attack']}, training seed {payload['seed']}, sampler seed "
             f"{payload['sample_seed']}; {payload['episodes']} evaluation episodes. Commit {payload['commit']}, "
             f"host {payload['host']}.", "",
             f"Poisoned model: {ref['poisoned']['normalized_reward']:.3f} / {ref['poisoned']['normalized_cost']:.2f}; "
             f"retrained from scratch: {ref['retrain']['normalized_reward']:.3f} / "
             f"{ref['retrain']['normalized_cost']:.2f} (normalised reward / cost).", "",
             "| start | updates | reward | cost | lambda | Q_c (batch mean) | Q_r (batch mean) |",
             "|---|---|---|---|---|---|---|"]
    for variant, rows in payload["runs"].items():
        for row in rows:
            lines.append(f"| {variant} | {row['updates']} | {row['normalized_reward']:.3f} | {row['normalized_cost']:.2f} | "
                         f"{row.get('lagrange_multiplier', float('nan')):.2f} | {row.get('q_cost', float('nan')):.2f} | "
                         f"{row.get('q_reward', float('nan')):.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
