#!/usr/bin/env bash
# Fails when a tracked C++/CUDA source is not formatted with the root .clang-format.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "format: clang-format not installed"; exit 1; }
files=$(git ls-files '*.cpp' '*.h' '*.cu' 2>/dev/null || find base cli engine kernels tests bench -name '*.cpp' -o -name '*.h' -o -name '*.cu')
clang-format --dry-run -Werror $files
echo "format: ok ($(echo "$files" | wc -w) files)"
