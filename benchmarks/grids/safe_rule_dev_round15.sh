#!/usr/bin/env bash
# Safe-RULE tuning, round 15, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# On the confirmation draw round 13's behaviour refit let the poisoned cost critics pass the retained data's own
# fast driving (s110: 7.82, 7.30). Here the refit behaviour model comes with a cost critic started from the retained
# data's Monte Carlo cost-to-go (round 10's 50%), which knows what that driving costs.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r15-1000-behaviour-refit50-cost-fit50 1000 safe_rule.behaviour_refit_fraction=0.5 \
  safe_rule.return_fit_fraction=0.5
