"""The GPU throughput benchmark runs (on CPU, tiny) and reports what it promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_align_throughput_bench_on_cpu():
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "align_throughput.py"), "--device", "cpu",
                           "--size", "tiny", "--steps", "2", "--batch", "2", "--prompt-len", "24",
                           "--response-len", "8"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["gradient_checkpointing"] for r in rows] == [False, True]
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["seq_len"] == 32 and r["peak_mem_gib"] > 0
