#!/usr/bin/env bash
# Fails when a module includes a module above it (docs/ARCHITECTURE.md: cli -> engine -> kernels,
# everything -> base), so an upward dependency is caught at test time, not in review.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
check() {  # check DIR FORBIDDEN_PREFIX...
  local dir=$1; shift
  for bad in "$@"; do
    if hits=$(grep -rnE "#include \"$bad/" "$dir" --include='*.h' --include='*.cpp' --include='*.cu'); then
      echo "layering: $dir/ must not include $bad/:"; echo "$hits"; status=1
    fi
  done
}
check base kernels engine rl tasks sandbox actors cli
check kernels engine rl tasks sandbox actors cli
check engine rl tasks sandbox actors cli
check rl tasks sandbox actors cli
check sandbox engine rl tasks actors cli kernels
check tasks engine rl actors cli kernels
check actors cli
[[ $status == 0 ]] && echo "layering: ok"
exit $status
