#!/usr/bin/env bash
# Safe-RULE tuning, round 8, dev split only (seeds 100-104, the valid cases 100, 101, 103 of the pool-1
# relabel attack). Round 7 (docs/safe_rule.md): the repaired policies are safe but stopped, the cost critic
# has barely moved off the poisoned one after the 200-update refit, and the forget terms push the actor off the
# forget (full-throttle) actions. Tried here, each on round 5's defaults at 1000 updates: the cost critic
# members re-drawn before a longer refit (half the budget); the actor's forget terms off; both.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r8-1000-reset-cost-refit50 1000 safe_rule.reset_critics=cost safe_rule.critic_refit_fraction=0.5
run pool1-r8-1000-no-actor-terms 1000 safe_rule.actor_weight=0 safe_rule.state_repair_weight=0
run pool1-r8-1000-reset-cost-refit50-no-actor-terms 1000 safe_rule.reset_critics=cost \
  safe_rule.critic_refit_fraction=0.5 safe_rule.actor_weight=0 safe_rule.state_repair_weight=0
