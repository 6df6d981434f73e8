#!/usr/bin/env bash
# Safe-RULE tuning, round 6, dev split only. Round 5's confirmation draw failed because both valid
# poisoned models (dev seeds 105, 108) had already stopped (reward 0.084, 0.169) and Safe-RULE kept them
# stopped. Exploratory (docs/safe_rule.md, round 6): fine-tuning those models after re-drawing the actor
# with no perturbation (the policy = the behaviour model's proposals chosen among by the critics) reached
# 0.279 and 0.238 at 1000 updates where plain fine-tuning stayed at 0.03-0.09. Tried here: reset_actor on
# round 5's defaults, on the dev seeds and on the confirmation draw (run only to check, never to choose).
set -euo pipefail
source "$(dirname "$0")/dev_split.sh"
run r6-1000-reset-actor 1000 safe_rule.reset_actor=true
.venv/bin/python benchmarks/dev_unlearning.py --regime "dev2-${REGIME#dev-}" --tag dev2-r6-1000-reset-actor \
  --methods safe_rule --steps 1000 --unlearn-seeds 0 1 --unlearn-set safe_rule.reset_actor=true
