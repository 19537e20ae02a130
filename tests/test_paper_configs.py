"""The paper's configs, checked by a dry run: the DAG they would run, without a hub or a model.

A dry run parses the Snakefile and plans jobs; nothing may load a dataset or a model there
(the hub address points at a closed local port, so any attempt would fail the run).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from test_workflow import planned_jobs

REPO = Path(__file__).resolve().parents[1]


def dry_run(workdir: Path, configfile: Path, target: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "-n", "-p", "--configfile", str(configfile), "--", target]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_paper_tldr_dry_run(tmp_path):
    cfg = REPO / "config" / "paper-tldr.yaml"
    out = yaml.safe_load(cfg.read_text())["out_dir"]
    proc = dry_run(tmp_path, cfg, f"{out}/winrates.csv")
    jobs = planned_jobs(proc)
    assert jobs == {"normalise": 1, "base_model": 1, "split": 1, "sft": 1, "oracle": 1, "reward_model": 3,
                    "oracle_table": 1, "ensemble_table": 1, "reference_table": 1, "align": 9, "generate": 10,
                    "score_policy": 10, "score_reference": 1, "winrates": 1}
    text = proc.stdout + proc.stderr
    # the normalise job reads the pinned hub datasets, no local raw file
    normalise = next(line for line in text.splitlines() if "python -m drdo" in line and " normalise " in line)
    for name in ("openai/summarize_from_feedback", "refs/convert/parquet", "CarperAI/openai_summarize_tldr",
                 "abisee/cnn_dailymail", "3.0.0"):
        assert name in normalise
    assert "--comparisons" not in normalise and "raw/" not in text
    # Table 6 lengths reach every tokenising stage; no gold reward on real data
    for stage in ("generate", "score", "table", "train", "split"):
        line = next(line for line in text.splitlines() if "python -m drdo" in line and f" {stage} " in line)
        assert '"max_prompt_length": 512' in line and '"chat_template": true' in line, line
    assert not [line for line in text.splitlines() if " score " in line and '"gold"' in line]
    # the paper's compute: training on 2 GPUs under DeepSpeed ZeRO-2 in bf16, inference on 1
    train = [line for line in text.splitlines() if "drdo.launch" in line and " train " in line]
    assert len(train) == 1 + 1 + 3 + 9
    assert all("--processes 2" in line and '"zero_optimization": {' in line and '"stage": 2' in line
               and '"dtype": "bfloat16"' in line and '"gradient_checkpointing": true' in line for line in train)
    assert all("--processes 1" in line for line in text.splitlines()
               if "drdo.launch" in line and (" generate " in line or " score " in line or " table " in line))
    assert not (tmp_path / out).exists()
