#!/usr/bin/env bash
# Safe-RULE tuning, round 19, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# Round 18's model repair reached retraining on s103 and left s101 stopped. The actor only perturbs the behaviour
# model's proposals (by at most phi), and the poisoned behaviour model proposes full throttle where the retained
# data brakes: with its proposals no perturbation can hold the speed, so the only safe policy in reach stops. Here the
# behaviour model is first re-fitted on the retained data (round 13's behaviour_refit_fraction), then the model repair
# tunes the actor on the simulated episodes; choice by the model's reward, cost by the critics or by the model.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
MODEL="safe_rule.model_repair_steps=100 safe_rule.model_updates_per_step=20 safe_rule.behaviour_refit_fraction=0.5"
run pool1-r19-1000-refit-model-repair 1000 $MODEL
run pool1-r19-1000-refit-model-repair-model-cost 1000 $MODEL safe_rule.select_by=model_cost
