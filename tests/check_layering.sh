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
check base kernels engine rl tasks sandbox actors serve cli
check kernels engine rl tasks sandbox actors serve cli
check engine rl tasks sandbox actors serve cli
check rl tasks sandbox actors serve cli
check sandbox engine rl tasks actors serve cli kernels
check tasks engine rl actors serve cli kernels
check actors serve cli
check serve cli
[[ $status == 0 ]] && echo "layering: ok"
exit $status
