#!/usr/bin/env bash
# Safe-RULE tuning, round 10, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# Round 7's diagnosis: after the refit the cost critic is still near the poisoned one, and a re-drawn one
# fitted by TD for 500 updates underestimates costs (round 8). Tried here: before the refit, the cost members
# regress on the retained data's logged discounted cost-to-go (Monte Carlo targets, nothing to bootstrap),
# for 20% or 50% extra updates, with the defaults and with the checkpoint choice by the model's cost.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r10-1000-cost-fit20 1000 safe_rule.return_fit_fraction=0.2
run pool1-r10-1000-cost-fit50 1000 safe_rule.return_fit_fraction=0.5
run pool1-r10-1000-cost-fit50-model-cost 1000 safe_rule.return_fit_fraction=0.5 safe_rule.select_by=model_cost
