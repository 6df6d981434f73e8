#!/usr/bin/env bash
# Safe-RULE tuning, round 9, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# Rounds 7-8 (docs/safe_rule.md): at 2000 updates the checkpoint choice passed reckless snapshots (the cost
# critics still undervalue them), and the dynamics model's simulated cost ranks true cost far better than the
# critics (0.82 vs 0.22, offline_scores.py). Tried here: select_by model_cost (reward and cost from the
# rollouts) at 1000 and 2000 updates, and with snapshots from suppression on (more, earlier candidates).
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r9-1000-model-cost 1000 safe_rule.select_by=model_cost
run pool1-r9-1000-model-cost-from-suppress 1000 safe_rule.select_by=model_cost safe_rule.select_from=suppress
run pool1-r9-2000-model-cost 2000 safe_rule.select_by=model_cost
run pool1-r9-2000-model-cost-from-suppress 2000 safe_rule.select_by=model_cost safe_rule.select_from=suppress
