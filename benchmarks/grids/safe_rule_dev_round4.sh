#!/usr/bin/env bash
# Safe-RULE tuning, round 4, dev split only. Round 3 left stopped policies (s104). Measured on s104:
# plain fine-tuning of the poisoned model on the retained data stops the policy too (reward 0.02 at
# 500 updates) and recovers only by ~3000 updates: the cost critic, having learnt that the poisoned
# policy is costly, over-estimates every action's cost, and an over-estimate decays at the TD
# contraction rate (gamma per target sync), so the multiplier winds up and the actor brakes. Fine-tuning
# after re-initialising the critics did not stop (0.27 at 1000 updates). Tried here: Safe-RULE with
# every critic member re-initialised before the refit, with the round-3 refit share and a longer one.
set -euo pipefail
source "$(dirname "$0")/dev_split.sh"
SHORT="safe_rule.repair_fraction=0.1 safe_rule.select_every=25 safe_rule.critic_refit_fraction=0.2"
run r4-1000-reset-all 1000 $SHORT safe_rule.reset_critics=all
run r4-1000-reset-all-refit04 1000 safe_rule.repair_fraction=0.1 safe_rule.select_every=25 \
  safe_rule.critic_refit_fraction=0.4 safe_rule.reset_critics=all
