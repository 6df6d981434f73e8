#!/usr/bin/env bash
# The confirmation draw for the pool-1 relabel attack (docs/protocol.md): dev seeds 105-114, never unlearned
# with this attack, run once with the defaults and once with round 13's behaviour refit. Nothing is tuned here.
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
confirm() {
  local tag=$1; shift
  .venv/bin/python benchmarks/dev_unlearning.py --regime "$REGIME" --tag "$tag" --methods safe_rule \
    --steps 1000 --unlearn-seeds 0 1 --seeds 105 106 107 108 109 110 111 112 113 114 --unlearn-set "$@"
}
confirm pool1-confirm-1000-defaults
confirm pool1-confirm-1000-behaviour-refit50 safe_rule.behaviour_refit_fraction=0.5
