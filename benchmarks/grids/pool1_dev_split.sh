# Sourced by the safe_rule_dev_round{7..10}.sh grids: the pool-1 relabel regime (the costliest 10% relabelled,
# docs/regime.md) and one grid point on its valid dev cases 100, 101 and 103.
#   run TAG STEPS [SECTION.KEY=VALUE ...]  ->  benchmarks/results/dev_unlearning/TAG.{json,md}
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REGIME=devall-b3-cpess-phi45-tau05-h64-budget08-ln-train8-relabel-pool1
run() {
  local tag=$1 steps=$2; shift 2
  .venv/bin/python benchmarks/dev_unlearning.py --regime "$REGIME" --tag "$tag" --methods safe_rule \
    --steps "$steps" --unlearn-seeds 0 1 --seeds 100 101 103 --unlearn-set "$@"
}
