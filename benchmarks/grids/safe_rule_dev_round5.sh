#!/usr/bin/env bash
# Safe-RULE tuning, round 5, dev split only. Round 4 showed the stopped policies (s104) are the learner's
# own transient, and that the reward critic scores a stopped policy like a moving one, so the checkpoint
# choice cannot see the stop. Exploratory (docs/safe_rule.md, round 5): a dynamics model fitted on the
# retained data ranks fine-tuning snapshots by true reward with rank correlation 0.92-0.98 (Q_r: 0.08-0.43).
# Tried here: the candidates' reward scored by model rollouts (cost still by the final cost critics), on the
# repair snapshots only and on snapshots from the end of the refit on; and wider candidates with the
# critic score as the control.
set -euo pipefail
source "$(dirname "$0")/dev_split.sh"
R3="safe_rule.repair_fraction=0.1 safe_rule.select_every=25 safe_rule.critic_refit_fraction=0.2"
run r5-1000-model 1000 $R3 safe_rule.select_by=model
run r5-1000-model-suppress 1000 $R3 safe_rule.select_by=model safe_rule.select_from=suppress
run r5-1000-critic-suppress 1000 $R3 safe_rule.select_from=suppress
