#!/usr/bin/env bash
# Safe-RULE tuning, round 1, on the dev split only (BallRun relabel, training seeds 100-104, the
# gate-2 regime). Single-seed diagnosis (s103) showed the critic hinges (reward_weight, cost_weight)
# inflate Q_c on retained states and stop the policy; this round asks which actor-side settings
# reach joint success with the critic hinges off. Each line writes
# benchmarks/results/dev_unlearning/<tag>.{json,md}.
set -euo pipefail
source "$(dirname "$0")/dev_split.sh"
OFF="safe_rule.reward_weight=0 safe_rule.cost_weight=0"
run r1-critic-off 500 $OFF
run r1-critic-off-nobehaviour 500 $OFF safe_rule.behaviour_weight=0
run r1-critic-off-penalty3 500 $OFF safe_rule.state_cost_penalty=3
run r1-critic-off-margin01 500 $OFF safe_rule.actor_margin=0.1
run r1-critic-off-repair01 500 $OFF safe_rule.repair_fraction=0.1
run r1-defaults 500 safe_rule.reward_weight=10
