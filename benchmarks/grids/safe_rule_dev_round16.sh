#!/usr/bin/env bash
# Safe-RULE, round 16, dev split only (the valid cases 100, 101, 103 of the pool-1 relabel attack): the budget
# curve's far end. The defaults stop at 1000 updates and reach s103 (not s101) at 2000 (rounds 7 and 9); at 4000
# updates (about half a retraining's 8000) does the repair reach retraining on both?
set -euo pipefail
source "$(dirname "$0")/pool1_dev_split.sh"
run pool1-r16-4000-defaults 4000
