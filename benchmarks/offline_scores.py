"""Can an offline score tell good policies from bad ones? Rank correlations with the true outcome (dev split).

Safe-RULE chooses among snapshots without the environment, so its choice is only as good as its
offline score. This script makes candidates the way the stopped policies arose (docs/safe_rule.md,
round 4): a regime run's poisoned model keeps training with the learner's own update on the
retained data, and a snapshot is kept every `--every` updates (the poisoned model itself included).
Every snapshot is then

  - evaluated in the simulator (20 episodes, the task's start-state perturbation, as regime.py);
  - scored as Safe-RULE's checkpoint choice would score it: with the *final* snapshot's critics on
    retained episodes' first states (Q_r and Q_c of the policy's action), and by rollouts in a
    dynamics model fitted on the retained data (`saferule_core/unlearning/dynamics.py`,
    select_by=model: simulated reward and cost returns).

Per case it reports Spearman's rank correlation of each offline score with the true reward and
with the true cost, and pooled over the cases.

  .venv/bin/python benchmarks/offline_scores.py --regime dev-b3-cpess-phi45-tau05-h64-budget08-ln-train8-relabel \\
      --seeds 100 101 102 103 104 --updates 1000 --every 100

Writes benchmarks/results/dev_unlearning/offline-scores-<tag>.json and .md (stamped with commit, command, host).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dev_unlearning import REGIME_RESULTS, RESULTS, evaluate_normalised  # noqa: E402
from regime import poison, regime_dataset  # noqa: E402
from stamp import run_stamp, write_results  # noqa: E402

from saferule_core.algos.batch import BatchSampler  # noqa: E402
from saferule_core.algos.checkpoint import load_learner  # noqa: E402
from saferule_core.tasks.spec import get_task  # noqa: E402
from saferule_core.unlearning.dynamics import DynamicsSettings, fit_dynamics, rollout_returns, rollout_starts  # noqa: E402
from saferule_core.unlearning.parts import clone_learner, load_network_state, model_parts, network_state  # noqa: E402
from saferule_core.unlearning.session import ForgetSplit, ScoringStates, offline_estimates  # noqa: E402

SCORES = {"critic_reward": "Q_r (final critics)", "model_reward": "model rollout reward",
          "critic_cost": "Q_c (final critics)", "model_cost": "model rollout cost"}


def spearman(x: NDArray[Any], y: NDArray[Any]) -> float:
    """Spearman's rho (average ranks for ties); nan when either side is constant."""
    def ranks(v: NDArray[Any]) -> NDArray[Any]:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):
            tied = v == value
            r[tied] = r[tied].mean()
        return r
    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def correlations(rows: list[dict[str, float]]) -> dict[str, float]:
    true_reward = np.array([r["true_reward"] for r in rows])
    true_cost = np.array([r["true_cost"] for r in rows])
    return {"critic_reward_vs_reward": spearman(np.array([r["critic_reward"] for r in rows]), true_reward),
            "model_reward_vs_reward": spearman(np.array([r["model_reward"] for r in rows]), true_reward),
            "critic_cost_vs_cost": spearman(np.array([r["critic_cost"] for r in rows]), true_cost),
            "model_cost_vs_cost": spearman(np.array([r["model_cost"] for r in rows]), true_cost)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", required=True, help="tag of a regime.py results file run with --attacks")
    parser.add_argument("--attack", default="relabel")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds of the cases")
    parser.add_argument("--updates", type=int, default=1000, help="fine-tuning updates after the poisoned model")
    parser.add_argument("--every", type=int, default=100, help="snapshot spacing in updates")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default=None, help="results file name (default: the regime)")
    args = parser.parse_args(argv)
    if args.every < 1 or args.updates < args.every:
        parser.error("--every must be >= 1 and --updates at least --every")
    argv = list(sys.argv[1:] if argv is None else argv)
    regime_file = REGIME_RESULTS / f"{args.regime}.json"
    if not regime_file.is_file():
        parser.error(f"no regime results {regime_file}")
    regime = json.loads(regime_file.read_text())
    run_dir = ROOT / regime["run_dir"]
    stamped = run_stamp("benchmarks/offline_scores.py", argv)
    torch.set_num_threads(args.threads)
    spec = get_task(regime["task"])
    limit = float(regime.get("eval_cost_limit", 10.0))
    dataset = regime_dataset(regime)
    settings = DynamicsSettings()

    def evaluate(learner: Any) -> tuple[float, float]:
        outcome = evaluate_normalised(learner, spec, args.episodes, limit)
        return outcome["normalized_reward"], outcome["normalized_cost"]

    cases = []
    for seed in args.seeds:
        poisoning = poison(dataset, args.attack, seed, regime.get("attack_settings"))
        split = ForgetSplit.of(poisoning.dataset, poisoning.episode_mask)
        learner = load_learner(run_dir / f"{args.attack}-s{seed}")
        stats = learner.info.stats
        model = fit_dynamics(split.retained, stats, settings, seed=0, device=learner.device)
        starts = rollout_starts(split.retained, stats, 64, seed=0, device=learner.device)
        sampler = BatchSampler(learner.training_data(split.retained, learner.config), stats, regime["batch_size"],
                               learner.device, 0)
        snapshots: list[tuple[int, dict[str, dict[str, torch.Tensor]], tuple[float, float]]] = [
            (0, network_state(learner), evaluate(learner))]
        learner.train_mode(True)
        for step in range(1, args.updates + 1):
            learner.update(sampler.sample())
            if step % args.every == 0:
                snapshots.append((step, network_state(learner), evaluate(learner)))
        final_parts = model_parts(learner)
        states = ScoringStates.of(learner, split, 0)
        candidate = clone_learner(learner)
        candidate_parts = model_parts(candidate)
        rows = []
        for step, state, (true_reward, true_cost) in snapshots:
            load_network_state(candidate, state)
            critic = offline_estimates(final_parts, states, policy=candidate_parts)
            model_reward, model_cost = rollout_returns(model, candidate_parts.policy_actions, starts)
            rows.append({"updates": step, "true_reward": true_reward, "true_cost": true_cost,
                         "critic_reward": critic["reward_value"], "critic_cost": critic["cost_value"],
                         "model_reward": spec.normalized_reward(model_reward),
                         "model_cost": spec.normalized_cost(model_cost, limit)})
        case = {"seed": seed, "rows": rows, "spearman": correlations(rows)}
        print(f"s{seed}: " + ", ".join(f"{k} {v:+.2f}" for k, v in case["spearman"].items()), flush=True)
        cases.append(case)

    pooled = {key: float(np.nanmean([c["spearman"][key] for c in cases])) for key in cases[0]["spearman"]}
    payload = {**stamped, "regime": args.regime, "attack": args.attack, "updates": args.updates, "every": args.every,
               "episodes": args.episodes, "dynamics": settings.__dict__, "rollout_starts": 64,
               "mean_spearman": pooled, "cases": cases}
    tag = args.tag or args.regime
    write_results(RESULTS, f"offline-scores-{tag}", payload, render_markdown)
    return 0


def render_markdown(payload: dict[str, Any]) -> str:
    keys = list(payload["mean_spearman"])
    lines = [f"# Offline scores against the simulator `{payload['command']}`", "",
             f"Regime {payload['regime']}, attack {payload['attack']}: each case's poisoned model fine-tuned on the "
             f"retained data for {payload['updates']} updates, a snapshot every {payload['every']}; each snapshot "
             f"evaluated ({payload['episodes']} episodes) and scored offline. Commit {payload['commit']}, "
             f"host {payload['host']}.", "",
             "Spearman rank correlation of each offline score with the true outcome:", "",
             "| seed | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for case in payload["cases"]:
        lines.append(f"| {case['seed']} | " + " | ".join(f"{case['spearman'][k]:+.2f}" for k in keys) + " |")
    lines.append("| mean | " + " | ".join(f"{payload['mean_spearman'][k]:+.2f}" for k in keys) + " |")
    lines += ["", "Snapshots (true reward / cost; model reward / cost; Q_r / Q_c):", "",
              "| seed | updates | true | model | critics |", "|---|---|---|---|---|"]
    for case in payload["cases"]:
        for row in case["rows"]:
            lines.append(f"| {case['seed']} | {row['updates']} | {row['true_reward']:.3f} / {row['true_cost']:.2f} | "
                         f"{row['model_reward']:.3f} / {row['model_cost']:.2f} | "
                         f"{row['critic_reward']:.1f} / {row['critic_cost']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
