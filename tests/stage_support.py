"""A tiny world made by the real stages (synthetic data, normalise, base, split, SFT, Oracle, the
reference table), for tests that run a stage as a process: killed, resumed, rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from drdo import synthetic
from drdo.cli import main

REPO = Path(__file__).resolve().parents[1]
ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 256}
TOKENS = {"max_prompt_length": 200, "max_length": 256, "chat_template": False}
TRAIN = {**TOKENS, "dtype": "float32", "batch_size": 4, "grad_accum": 1, "eval_batch_size": 16, "lr": 1e-3,
         "epochs": 1.0, "max_steps": 3, "warmup_steps": 1, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": 0,
         "gradient_checkpointing": False, "pack_tokens": 0}
DPO = {**TRAIN, "beta": 0.1}
INFERENCE = {**TOKENS, "dtype": "float32"}


def build_world(d: Path) -> dict[str, Path]:
    """The world's files under ``d``, made in this process by the stages themselves."""
    synthetic.main(["--out-dir", str(d / "raw"), "--config-json", json.dumps(
        {"n_train_posts": 24, "n_valid_posts": 6, "n_test_posts": 4, "n_news": 4, "n_sft_extra_posts": 8})])
    w = {"pairs": d / "data" / "pairs.parquet", "sft_data": d / "data" / "sft.parquet",
         "prompts": d / "data" / "eval_prompts.parquet", "base": d / "models" / "base",
         "splits": d / "data" / "splits", "sft": d / "models" / "sft", "oracle": d / "models" / "oracle",
         "ref": d / "tables" / "reference_logps.parquet"}
    main(["normalise", "--params", "{}", "--comparisons", str(d / "raw" / "comparisons.jsonl"),
          "--sft-train", str(d / "raw" / "sft_train.jsonl"), "--out-pairs", str(w["pairs"]), "--out-sft", str(w["sft_data"])])
    main(["eval-prompts", "--params", json.dumps({"n_tldr": 4, "n_news": 4, "seed": 0}),
          "--sft-test", str(d / "raw" / "sft_test.jsonl"), "--news", str(d / "raw" / "news_test.jsonl"),
          "--out", str(w["prompts"])])
    main(["base", "--params", json.dumps({"name_or_path": "tiny", "chat_template": False, "dtype": "float32",
                                          "seed": 0, "vocab_size": 400, "tiny": ARCH}),
          "--pairs", str(w["pairs"]), "--sft", str(w["sft_data"]), "--out", str(w["base"])])
    main(["split", "--params", json.dumps({**TOKENS, "quantile": 0.5, "edit_distance": "token",
                                           "max_validation": None, "seed": 0}),
          "--pairs", str(w["pairs"]), "--base", str(w["base"]), "--out-dir", str(w["splits"]),
          "--out-table5", str(d / "data" / "table5.csv")])
    main(["train", "--objective", "sft", "--params", json.dumps(TRAIN), "--init", str(w["base"]),
          "--data", str(w["sft_data"]), "--out", str(w["sft"])])
    main(["train", "--objective", "oracle", "--params", json.dumps({**TRAIN, "nll_weight": 0.01, "head_seed": 0}),
          "--init", str(w["sft"]), "--data", str(w["splits"] / "all.parquet"), "--out", str(w["oracle"])])
    main(["table", "--params", json.dumps({**INFERENCE, "batch_size": 8}), "--pairs", str(w["splits"] / "all.parquet"),
          "--model", f"ref_logp={w['sft']}", "--value", "logp", "--out", str(w["ref"])])
    return w


def stage(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m drdo ARGS`` as a rule runs it (its own process; stderr into ``log``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "workflow"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    fh = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "drdo", "--threads", "1", *args], stdout=fh,
                            stderr=subprocess.STDOUT, env=env)


def run(args: list[str]) -> None:
    """The stage in this process (faster than a new one), on one thread like ``stage``."""
    import torch

    threads = torch.get_num_threads()
    try:
        main(["--threads", "1", *args])
    finally:
        torch.set_num_threads(threads)


def kill_when(args: list[str], log: Path, ready, timeout: float = 300) -> str:
    """Start the stage, SIGKILL it as soon as ``ready()`` holds (it has made progress)."""
    proc = stage(args, log)
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the stage ended (rc {proc.returncode}) before it could be killed:\n"
                                 f"{log.read_text()[-4000:]}")
        assert time.time() < deadline, log.read_text()[-4000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return log.read_text()


def files_of(path: Path) -> dict[str, bytes]:
    """Every file of an output (a file or a checkpoint folder) by relative name, with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def stray_files(folder: Path, name: str) -> list[Path]:
    """What a killed write of ``folder / name`` may leave beside it (io.atomic_path's hidden folder)."""
    return sorted(folder.glob(f".{name}.*"))
