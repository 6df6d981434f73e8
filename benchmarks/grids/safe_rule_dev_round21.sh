#!/usr/bin/env bash
# Safe-RULE tuning, round 21, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# Round 20's longer model repair brought one s101 run to 0.175 (bar 0.216); the other kept a snapshot from before the
# model repair, whose later snapshots the (unrepaired) cost critics may reject. Here: the same with the choice by the
# model's cost, and a twice longer model repair.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
BASE="safe_rule.model_updates_per_step=20 safe_rule.behaviour_refit_fraction=0.5"
run pool1-r21-1000-refit-model-repair300-model-cost 1000 $BASE safe_rule.model_repair_steps=300 \
  safe_rule.model_repair_snapshot_every=20 safe_rule.select_by=model_cost
run pool1-r21-1000-refit-model-repair600 1000 $BASE safe_rule.model_repair_steps=600 safe_rule.model_repair_snapshot_every=40
