#!/usr/bin/env bash
# Adds the benchmark peers to the reference venv (see scripts/reference-venv.sh):
# llama-cpp-python, compiled from source for this machine's vector units (takes ~20 minutes on
# 2 cores). Prints the venv's python path.
#
# The build enables AVX2/AVX-512 (VNNI, VBMI, BF16) explicitly instead of GGML_NATIVE: with
# GGML_NATIVE on a CPU that reports AMX (Sapphire Rapids), llama.cpp 0.3.36's AMX matmul dies with
# SIGILL (`tilezero` in an OpenMP worker, ggml_backend_amx_mul_mat) on this VM, although a plain
# AMX test program runs. Set LLAMA_CMAKE_ARGS to build with other flags; the flags of the current
# build are kept next to the venv, and a change rebuilds.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$(./scripts/reference-venv.sh)
venv=$(dirname "$(dirname "$py")")
flags=${LLAMA_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"}
marker="$venv/llama-cpp-python.cmake-args"
if ! "$py" -c 'import llama_cpp' 2>/dev/null || [ "$(cat "$marker" 2>/dev/null)" != "$flags" ]; then
  echo "peer-venv: building llama-cpp-python 0.3.36 with CMAKE_ARGS=$flags (~20 minutes)" >&2
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL=2 \
    nice -n 19 "$py" -m pip install --quiet --no-cache-dir --force-reinstall --no-deps \
    llama-cpp-python==0.3.36 >&2
  "$py" -m pip install --quiet llama-cpp-python==0.3.36 >&2   # its dependencies, if missing
  printf '%s' "$flags" > "$marker"
fi
echo "$py"
