#!/usr/bin/env bash
# Safe-RULE tuning, round 12, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# Rounds 7-11 (docs/safe_rule.md): the repaired policies stop inside the learner's TD transient. Here every
# critic member starts from a Monte Carlo fit of the retained data's returns (reward and cost) and then holds
# still: the actor and the checkpoint choice make one constrained improvement step on the retained
# behaviour's own values, with no transient to wait out.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r12-1000-fit-all50-hold 1000 safe_rule.return_fit_fraction=0.5 safe_rule.return_fit=all \
  safe_rule.hold_critics=true safe_rule.select_by=model_cost
run pool1-r12-1000-fit-all50-hold-reset-actor 1000 safe_rule.return_fit_fraction=0.5 safe_rule.return_fit=all \
  safe_rule.hold_critics=true safe_rule.reset_actor=true safe_rule.select_by=model_cost
