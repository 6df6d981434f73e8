"""What a constrained BCQ-Lag policy chooses from: its candidates' values on dataset states.

For each model directory (a BCQ-Lag checkpoint trained with `action_selection: constrained`), on
the episodes' first states and on random dataset states it reports the selection threshold, the
candidates' cost values (the smallest and the median per state, averaged), the share of states
where no candidate is within the threshold (the policy then takes the least costly one), the
spread of the candidates' actions (how different the N decoded candidates are), the best
feasible and the best overall reward value, and the mean |action| the policy takes.

  .venv/bin/python benchmarks/selection_diagnosis.py --data runs/regime/data/BallRun-s0-b3 \\
      runs/dev_unlearning/<regime>/retrain-relabel-s104 runs/dev_unlearning/<regime>/retrain-relabel-s102

Prints a table (a diagnosis for docs/regime.md, not a results file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from saferule_core.algos.bcq_lag import BCQLag  # noqa: E402
from saferule_core.algos.checkpoint import load_learner  # noqa: E402
from saferule_core.data.store import DatasetStore  # noqa: E402
from saferule_core.errors import SafeRuleError  # noqa: E402


def diagnose(learner: BCQLag, observations: np.ndarray) -> dict[str, float]:
    core = learner.policy_core()
    obs = torch.from_numpy(learner.info.stats.normalize_observations(observations)).float()
    with torch.no_grad():
        candidates, q_reward, q_cost = core.scored_candidates(obs)
        chosen = core(obs)
    feasible = q_cost <= learner.selection_threshold
    best_feasible = torch.where(feasible, q_reward, torch.full_like(q_reward, -torch.inf)).max(dim=1).values
    some = feasible.any(dim=1)
    return {"threshold": learner.selection_threshold, "qc_min": float(q_cost.min(dim=1).values.mean()),
            "qc_median": float(q_cost.median(dim=1).values.mean()), "none_feasible": float((~some).float().mean()),
            "candidate_spread": float(candidates.std(dim=1).mean()),
            "qr_best_feasible": float(best_feasible[some].mean()) if bool(some.any()) else float("nan"),
            "qr_best": float(q_reward.max(dim=1).values.mean()), "abs_action": float(chosen.abs().mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset directory the models were trained on")
    parser.add_argument("--states", type=int, default=2000, help="random dataset states (default 2000)")
    parser.add_argument("models", type=Path, nargs="+", help="BCQ-Lag model directories")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    try:
        dataset = DatasetStore.open(args.data).load()
        rng = np.random.default_rng(0)
        state_sets = {"first": dataset.observations[dataset.episode_starts],
                      "random": dataset.observations[rng.choice(len(dataset.observations),
                                                                min(args.states, len(dataset.observations)), replace=False)]}
        print("| model | states | threshold | Q_c min / median | none feasible | candidate spread | "
              "Q_r best feasible / best | mean abs action |")
        print("|---|---|---|---|---|---|---|---|")
        for directory in args.models:
            learner = load_learner(directory, dataset)
            if not isinstance(learner, BCQLag) or learner.config.action_selection != "constrained":
                print(f"error: {directory} is not a constrained BCQ-Lag model", file=sys.stderr)
                return 2
            for label, observations in state_sets.items():
                d = diagnose(learner, observations)
                print(f"| {directory.name} | {label} | {d['threshold']:.2f} | {d['qc_min']:.2f} / {d['qc_median']:.2f} | "
                      f"{d['none_feasible']:.2f} | {d['candidate_spread']:.3f} | {d['qr_best_feasible']:.1f} / "
                      f"{d['qr_best']:.1f} | {d['abs_action']:.2f} |")
    except SafeRuleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
