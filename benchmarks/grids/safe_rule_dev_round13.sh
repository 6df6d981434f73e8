#!/usr/bin/env bash
# Safe-RULE tuning, round 13, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# Rounds 7-12 (docs/safe_rule.md) stop: the critics choose among the behaviour model's proposals, and the
# poisoned behaviour model still proposes the forget episodes' full-throttle actions, which the poisoned critics
# value as cheap. Here the behaviour model is re-drawn and fitted on the retained data first (500 extra updates),
# so every phase after it chooses among what the retained data does.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r13-1000-behaviour-refit50 1000 safe_rule.behaviour_refit_fraction=0.5
run pool1-r13-1000-behaviour-refit50-reset-actor 1000 safe_rule.behaviour_refit_fraction=0.5 safe_rule.reset_actor=true
