#!/usr/bin/env bash
# Safe-RULE tuning, round 3, dev split only. Round 2's failure modes at 1000 updates: s103 drifting
# back to the poisoned behaviour during repair, s104 stopping. Tried here: a shorter repair with
# denser snapshots, then a critic refit (the critics and the multiplier learn the retained data's
# values of the poisoned policy before the actor moves), at 1000 and 500 updates, and a smaller
# actor margin on top.
set -euo pipefail
source "$(dirname "$0")/dev_split.sh"
SHORT="safe_rule.repair_fraction=0.1 safe_rule.select_every=25"
run r3-1000-repair01 1000 $SHORT
run r3-1000-refit02 1000 $SHORT safe_rule.critic_refit_fraction=0.2
run r3-500-refit02 500 $SHORT safe_rule.critic_refit_fraction=0.2
run r3-1000-refit02-margin002 1000 $SHORT safe_rule.critic_refit_fraction=0.2 safe_rule.actor_margin=0.02
