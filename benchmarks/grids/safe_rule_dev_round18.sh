#!/usr/bin/env bash
# Safe-RULE tuning, round 18, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# Every round so far improved the actor on critics that still carry the poison. Here, after the usual phases, the
# actor is improved on simulated episodes of the dynamics model of the retained data (model_repair_steps), which is
# fitted longer (20 model updates per unlearning update: on s101 the 1.5x model put 11.5 cost on the retrained
# policy whose true cost is 1.8, the 20x model 2.9); its snapshots join the checkpoint choice.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
MODEL="safe_rule.model_repair_steps=100 safe_rule.model_updates_per_step=20"
run pool1-r18-1000-model-repair 1000 $MODEL
run pool1-r18-1000-model-repair-gentle 1000 $MODEL safe_rule.model_repair_learning_rate=0.0001 \
  safe_rule.model_repair_cost_penalty=1
run pool1-r18-1000-model-repair-model-cost 1000 $MODEL safe_rule.select_by=model_cost
