#!/usr/bin/env bash
# Safe-RULE tuning, round 2, dev split only (see round 1). Round 1's best: critic hinges off with
# state_cost_penalty 3 (9/10 safe, 5/10 joint) or actor_margin 0.1 (10/10, 5/10); failures were
# near misses (0.24 against a 0.26 bar) and stopped policies (s104, s103 on one unlearning seed).
# Base here: critic hinges off + state_cost_penalty 3.
set -euo pipefail
source "$(dirname "$0")/dev_split.sh"
BASE="safe_rule.reward_weight=0 safe_rule.cost_weight=0 safe_rule.state_cost_penalty=3"
run r2-base-margin01 500 $BASE safe_rule.actor_margin=0.1
run r2-base-repair06 500 $BASE safe_rule.repair_fraction=0.6
run r2-base-penalty1 500 safe_rule.reward_weight=0 safe_rule.cost_weight=0 safe_rule.state_cost_penalty=1
run r2-base-select25 500 $BASE safe_rule.select_every=25
run r2-base-250 250 $BASE safe_rule.select_every=25
