#!/usr/bin/env bash
# The report split, run once with the settings frozen in docs/protocol.md ("Tenth session"): BallRun, training
# seeds 0-4, the pool-1 relabel attack at 10%, the dev split's learner regime unchanged; Safe-RULE with the
# library's defaults at 1000 updates and the three approximate baselines with the same budget, selection rule and
# (default) settings; 3 unlearning seeds each. Nothing here is tuned.
#   1. regime.py: clean, random-forget retrained and poisoned models for seeds 0-4 (gates 1 and 2)
#   2. dev_unlearning.py --split report: exact retraining (cached) and each method, one results file per method
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REGIME=report-b3-cpess-phi45-tau05-h64-budget08-ln-train8-relabel-pool1
if [ ! -f "benchmarks/results/regime/$REGIME.json" ]; then
  .venv/bin/python benchmarks/regime.py --tag "$REGIME" --seeds 0 1 2 3 4 --steps 10000 --batch-size 256 --threads 2 \
    --attacks relabel --attack-set pool_factor=1.0 \
    --set actor_hidden=[64,64] critic_hidden=[64,64] vae_hidden=128 action_selection=constrained \
    pessimistic_cost=true tau=0.05 phi=0.45 selection_budget=0.8 critic_layer_norm=true cost_limit=8
fi
for method in "${@:-safe_rule finetune neggrad_plus trajdeleter}"; do
  for m in $method; do
    .venv/bin/python benchmarks/dev_unlearning.py --split report --regime "$REGIME" --tag "report-relabel-1000-$m" \
      --methods "$m" --steps 1000 --unlearn-seeds 0 1 2
  done
done
