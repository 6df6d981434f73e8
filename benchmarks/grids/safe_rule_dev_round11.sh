#!/usr/bin/env bash
# Safe-RULE tuning, round 11, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# Rounds 7 and 10 (docs/safe_rule.md): a fresh actor alone and a Monte Carlo cost start alone each moved s103
# off the stop (0.18-0.20) without reaching its bar; tried here together, with the choice by the critics'
# cost and by the model's.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r11-1000-reset-actor-cost-fit50 1000 safe_rule.reset_actor=true safe_rule.return_fit_fraction=0.5
run pool1-r11-1000-reset-actor-cost-fit50-model-cost 1000 safe_rule.reset_actor=true \
  safe_rule.return_fit_fraction=0.5 safe_rule.select_by=model_cost
