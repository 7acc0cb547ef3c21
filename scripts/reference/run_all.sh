#!/usr/bin/env bash
# Regenerates tests/data/varied/* on a machine with torch + transformers (the lent GPU machine):
#   bash scripts/reference/run_all.sh OUTDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: run_all.sh OUTDIR}
python3 "$here/make_reference.py" "$here/noqlora.json" "$out/noqlora" --seed 1
python3 "$here/make_reference.py" "$here/yarn_mscale.json" "$out/yarn_mscale" --seed 2 --seq 40
python3 "$here/make_reference.py" "$here/legacy_yarn.json" "$out/legacy_yarn" --seed 3 --seq 20 --keep-config
python3 -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__)"
