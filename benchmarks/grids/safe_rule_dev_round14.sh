#!/usr/bin/env bash
# Safe-RULE tuning, round 14, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack).
# Round 13 (docs/safe_rule.md): re-fitting the behaviour model on the retained data first made both s103 runs
# joint successes; s101 stayed slow (0.06-0.10 against a bar of 0.216). Around that setting: a longer behaviour
# fit, a longer critic refit before the actor moves, and the actor's forget terms off (the behaviour model no
# longer proposes the forget actions, so the terms may only brake).
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r14-1000-behaviour-refit100 1000 safe_rule.behaviour_refit_fraction=1.0
run pool1-r14-1000-behaviour-refit50-critic-refit40 1000 safe_rule.behaviour_refit_fraction=0.5 \
  safe_rule.critic_refit_fraction=0.4
run pool1-r14-1000-behaviour-refit50-no-actor-terms 1000 safe_rule.behaviour_refit_fraction=0.5 \
  safe_rule.actor_weight=0 safe_rule.state_repair_weight=0
