#!/usr/bin/env bash
# A separate venv for OSRL (osrl-lib), the reference implementation our learners are compared
# with. OSRL pins torch~=1.13 and protobuf~=3.19, so it is installed --no-deps beside the same
# torch 2.13.0 CPU build we use. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.venv-osrl"
stamp="$venv/.stamp-v3"
[ -f "$stamp" ] && exit 0
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0 numpy==1.26.4 scipy tqdm pyyaml \
    gymnasium==0.28.1 pybullet==3.2.7 bullet-safety-gym==1.4.0 h5py "pyarrow<26" "pandas<3" matplotlib
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps osrl-lib==0.1.0
touch "$stamp"
