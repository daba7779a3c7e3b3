#!/bin/sh
# Print the CUDA toolkit folder, or nothing when there is none.
# An `nvcc` on PATH can be a small wrapper (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`):
# torch would then guess the wrapper's folder, so follow the wrapper to the real binary.
if [ -n "$CUDA_HOME" ]; then echo "$CUDA_HOME"; exit 0; fi
nvcc=$(command -v nvcc 2>/dev/null) || exit 0
real=$(readlink -f "$nvcc")
if head -c 2 "$real" | grep -q '#!'; then
    target=$(grep -o '/[^" ]*/bin/nvcc' "$real" | head -n 1)
    [ -n "$target" ] && real=$(readlink -f "$target")
fi
dirname "$(dirname "$real")"
