"""Run one of the workflow's stages (``python -m drdo <stage> ...``) from a benchmark script."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def run_stage(threads: int, args: list[str], log: Path) -> float:
    """The stage's wall time in seconds; its output goes to ``log``, and a failure raises."""
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "drdo", "--threads", str(threads), *args], stdout=f,
                       stderr=subprocess.STDOUT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start
