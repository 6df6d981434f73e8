#!/usr/bin/env bash
# Safe-RULE tuning, round 7, dev split only (seeds 100-104). The relabel attack now relabels the costliest
# 10% (pool_factor 1.0, docs/regime.md): 9 of its 15 poisoned models drive fully recklessly (cost ~8), and
# with round 5's defaults Safe-RULE leaves them safe but stopped (devall-pool1-r5-defaults-1000). Tried here on
# the valid dev cases (100, 101, 103): the defaults again, a fresh actor (reset_actor), twice the budget, and both.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r7-1000-defaults 1000
run pool1-r7-1000-reset-actor 1000 safe_rule.reset_actor=true
run pool1-r7-2000 2000
run pool1-r7-2000-reset-actor 2000 safe_rule.reset_actor=true
