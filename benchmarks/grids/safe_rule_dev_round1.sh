#!/usr/bin/env bash
# Safe-RULE tuning, round 1, on the dev split only (BallRun relabel, training seeds 100-104, the
# gate-2 regime). Single-seed diagnosis (s103) showed the critic hinges (reward_weight, cost_weight)
# inflate Q_c on retained states and stop the policy; this round asks which actor-side settings
# reach joint success with the critic hinges off. Each line writes
# benchmarks/results/dev_unlearning/<tag>.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
REGIME=dev-b3-cpess-phi45-tau05-h64-budget08-ln-train8-relabel
run() {
  local tag=$1; shift
  .venv/bin/python benchmarks/dev_unlearning.py --regime "$REGIME" --tag "$tag" --methods safe_rule \
    --steps 500 --unlearn-seeds 0 1 --unlearn-set "$@"
}
OFF="safe_rule.reward_weight=0 safe_rule.cost_weight=0"
run r1-critic-off $OFF
run r1-critic-off-nobehaviour $OFF safe_rule.behaviour_weight=0
run r1-critic-off-penalty3 $OFF safe_rule.state_cost_penalty=3
run r1-critic-off-margin01 $OFF safe_rule.actor_margin=0.1
run r1-critic-off-repair01 $OFF safe_rule.repair_fraction=0.1
run r1-defaults safe_rule.reward_weight=10
