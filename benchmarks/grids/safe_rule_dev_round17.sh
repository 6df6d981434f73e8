#!/usr/bin/env bash
# Safe-RULE tuning, round 17, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# The exploratory look after round 16 (docs/safe_rule.md): the repaired policies accelerate less than the retrained
# ones at the start states, which the forget episodes share with the retained ones; the actor and behaviour terms
# push away from the forget action there too. Here they act only where the retained data does not cover the
# forget (state, action), at two coverage quantiles.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r17-1000-gate50 1000 safe_rule.gate_covered_quantile=0.5
run pool1-r17-1000-gate90 1000 safe_rule.gate_covered_quantile=0.9
