"""Is a CPU training job the same from run to run? The same one-process fp32 SFT job, run N times
as its own process with and without MKL's strict mode (``drdo.launch.CPU_REPRODUCIBLE``, which
the launcher gives every CPU job), counting the distinct weights it ends with.

    PYTHONPATH=workflow python bench/cpu_reproducibility.py --runs 8 --threads 2

MKL, torch's CPU BLAS, does not promise the same float32 rounding from run to run (its
documentation names memory alignment and threading), and on one machine it differed in some series
of runs and not in others: a series without differences shows little. The model is a 1-layer Llama
of width 512 (GEMMs large enough to be threaded). Prints a JSON line per mode: the runs, the
distinct results and the largest difference between any two; runs of the two modes alternate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from drdo.base_model import tiny_llama, train_tokenizer
from drdo.launch import CPU_REPRODUCIBLE, command

ARCH = {"hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 64}
POSTS = [f"post {i}: my {w} broke again and again" for i, w in enumerate(
    ["car", "phone", "bike", "laptop", "door", "kettle", "watch", "lamp"])]
PARAMS = {"lr": 1e-3, "batch_size": 4, "grad_accum": 2, "max_steps": 3, "warmup_steps": 1, "weight_decay": 0.01,
          "max_grad_norm": 1.0, "seed": 0, "dtype": "float32", "max_length": 48, "max_prompt_length": 32,
          "eval_batch_size": 8}


def prepare(work: Path) -> None:
    tok = train_tokenizer(POSTS + ["fixed", "broken", "it works now", "nothing"], vocab_size=300)
    model = tiny_llama(tok, ARCH, seed=0)
    model.save_pretrained(work / "init")
    tok.save_pretrained(work / "init")
    pd.DataFrame({"prompt": POSTS * 2, "response": ["it works now", "fixed it", "nothing"] * 5 + ["ok"]}).to_parquet(
        work / "sft.parquet")


def train(work: Path, name: str, threads: int, strict: bool) -> Path:
    """The train stage's command and environment as the launcher gives a CPU job, minus MKL's
    strict mode where ``strict`` is false; a process of its own."""
    args = ["train", "--objective", "sft", "--params", json.dumps(PARAMS), "--init", str(work / "init"),
            "--data", str(work / "sft.parquet"), "--out", str(work / name), "--resume", str(work / ".resume" / name)]
    cmd, extra = command(0, threads, args)
    mode = CPU_REPRODUCIBLE if strict else {}
    env = {k: v for k, v in (os.environ | extra).items() if k not in CPU_REPRODUCIBLE} | mode
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return work / name / "model.safetensors"


def summarise(paths: list[Path]) -> dict:
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    first = {d: p for d, p in reversed(list(zip(digests, paths)))}  # one file per distinct result
    weights = [load_file(p) for p in first.values()]
    spread = max((float((a[k] - b[k]).abs().max()) for i, a in enumerate(weights) for b in weights[i + 1:] for k in a),
                 default=0.0)
    return {"runs": len(paths), "distinct": len(first), "most_common": max(digests.count(d) for d in first),
            "max_abs_diff": spread}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=8, help="runs per mode")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    result = {"threads": a.threads, "torch": torch.__version__, "mkl": torch.backends.mkl.is_available()}
    with tempfile.TemporaryDirectory(prefix="cpu_repro.") as tmp:
        work = Path(tmp)
        prepare(work)
        paths = {"default": [], "strict": []}
        for i in range(a.runs):  # interleaved, so a drift of the machine touches both modes alike
            for mode in paths:
                paths[mode].append(train(work, f"{mode}-{i}", a.threads, mode == "strict"))
        for mode, ps in paths.items():
            result[mode] = summarise(ps)
            print(json.dumps({"mode": mode, "MKL_CBWR": CPU_REPRODUCIBLE["MKL_CBWR"] if mode == "strict" else None,
                              "threads": a.threads, **result[mode]}), flush=True)
    return result


if __name__ == "__main__":
    main()
