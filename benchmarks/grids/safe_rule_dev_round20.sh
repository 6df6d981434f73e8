#!/usr/bin/env bash
# Safe-RULE tuning, round 20, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# Round 19 moved s101 from stopped to half of retraining's reward with 100 model-repair steps after a behaviour
# refit. Here the model repair runs three times as long, to tell a short repair from a frontier it cannot leave.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r20-1000-refit-model-repair300 1000 safe_rule.model_repair_steps=300 safe_rule.model_updates_per_step=20 \
  safe_rule.behaviour_refit_fraction=0.5 safe_rule.model_repair_snapshot_every=20
