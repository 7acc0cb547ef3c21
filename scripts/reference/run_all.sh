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
python3 "$here/make_reference.py" "$here/v32_yarn.json" "$out/v32_yarn" --seed 4 --seq 30
# index_topk 2 over 128 tokens: torch.topk takes its partial_sort branch (k * 64 <= row length).
python3 "$here/make_reference.py" "$here/v32_long.json" "$out/v32_long" --seed 5 --seq 128 --batch 1
