# Sourced by the safe_rule_dev_round*.sh grids: the dev split's regime and one grid point.
#   run TAG STEPS KEY=VALUE ...   ->  benchmarks/results/dev_unlearning/TAG.{json,md}
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REGIME=dev-b3-cpess-phi45-tau05-h64-budget08-ln-train8-relabel
run() {
  local tag=$1 steps=$2; shift 2
  .venv/bin/python benchmarks/dev_unlearning.py --regime "$REGIME" --tag "$tag" --methods safe_rule \
    --steps "$steps" --unlearn-seeds 0 1 --unlearn-set "$@"
}
