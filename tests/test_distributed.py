"""The trainer on N processes: 2 CPU ranks (DDP over gloo, and DeepSpeed ZeRO-2) with micro-batch
b/2 end with the same weights and loss curve as 1 process with batch b; only rank 0 writes.

Runs the real stage through the real launcher (``python -m drdo.launch``), as the rules do, with
``--cpu-ranks`` (the config's ``resources.cpu_ranks: true``): the launcher's explicit opt-in to
ranks on the CPU, without which a job asking for GPUs on a machine without CUDA stops.
The first DeepSpeed run on a machine compiles a small communication extension (~60 s).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from safetensors.torch import load_file

from precision_support import validation_under
from drdo import io
from drdo.base_model import tiny_llama, train_tokenizer
from drdo.launch import command
from drdo.lean_layers import MIN_WIDTH

REPO = Path(__file__).resolve().parents[1]
# as wide as drdo.lean_layers takes: the lean MLP and norm forwards run under every backend
ARCH = {"hidden_size": MIN_WIDTH, "intermediate_size": 2 * MIN_WIDTH, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64}
POSTS = [f"post {i}: my {w} broke again and again" for i, w in enumerate(
    ["car", "phone", "bike", "laptop", "door", "kettle", "watch", "lamp"])]
PARAMS = {"lr": 1e-3, "batch_size": 4, "grad_accum": 2, "max_steps": 3, "warmup_steps": 1, "weight_decay": 0.01,
          "max_grad_norm": 1.0, "seed": 0, "dtype": "float32", "max_length": 48, "max_prompt_length": 32,
          "eval_batch_size": 8}
DRDO = {**PARAMS, "alpha": 0.1, "gamma": 2.0, "student_reward": "head", "teacher": "oracle", "logp_agg": "sum",
        "head_seed": 0}
# three members that disagree pair by pair: the min over members is decided by the whole batch
EDPO = {**PARAMS, "beta": 0.1, "ensemble_size": 3, "reduction": "min"}
TABLES = {"drdo": "oracle.parquet", "edpo": "edpo.parquet"}
pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    tok = train_tokenizer(POSTS + ["fixed", "broken", "it works now", "nothing"], vocab_size=300)
    model = tiny_llama(tok, ARCH, seed=0)
    model.save_pretrained(d / "init")
    tok.save_pretrained(d / "init")
    pairs = pd.DataFrame({"pair_id": [f"p{i}" for i in range(8)], "prompt": POSTS,
                          "chosen": ["it works now"] * 8, "rejected": ["nothing broken"] * 8,
                          "split": ["train"] * 6 + ["validation"] * 2})
    io.write_parquet(pairs, d / "pairs.parquet", {})
    io.write_parquet(pairs[["pair_id"]].assign(oracle_chosen=[0.1 * i for i in range(8)], oracle_rejected=-0.3),
                     d / "oracle.parquet", {})
    rng = np.random.default_rng(0)
    members = {f"rm{k}_{side}": rng.normal(scale=3.0, size=8) for k in range(3) for side in ("chosen", "rejected")}
    io.write_parquet(pairs[["pair_id"]].assign(ref_logp_chosen=-20.0, ref_logp_rejected=-22.0, **members),
                     d / "edpo.parquet", {})
    sft = pd.DataFrame({"prompt": POSTS * 2, "response": ["it works now", "fixed it", "nothing"] * 5 + ["ok"]})
    io.write_parquet(sft, d / "sft.parquet", {})
    return d


def _train(inputs: Path, name: str, objective: str, params: dict, processes: int) -> Path:
    out = inputs / name
    args = ["train", "--objective", objective, "--params", json.dumps(params), "--init", str(inputs / "init"),
            "--out", str(out), "--resume", str(inputs / ".resume" / name)]
    args += (["--data", str(inputs / "pairs.parquet"), "--tables", str(inputs / TABLES[objective])]
             if objective != "sft" else ["--data", str(inputs / "sft.parquet")])
    cmd = [sys.executable, "-m", "drdo.launch", "--processes", str(processes), "--cpu-ranks", "--threads", "2", "--",
           *args]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'workflow'}:{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=480)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"world size {processes}" in proc.stderr
    assert "lean MLP and norm forwards on 4 modules" in proc.stderr  # 1 layer: its MLP, 2 norms; the final norm
    (inputs / f"{name}.log").write_text(proc.stderr)
    return out


# fp32 runs on N ranks differ from one process only in summation order (gradients reduced over
# ranks, rows packed otherwise). Adam moves a weight by about lr a step whatever its gradient's
# size, so where a gradient is a near-cancelling sum, rounding can move that weight differently, by
# up to lr a step. So: all weights together within 1e-5 of what training moved them (a wrong
# reduction or shard moves them all), every weight but 1 in 10,000 within 1e-5 (1% of one step at
# lr 1e-3), and none by more than the steps could move it. Measured on an Intel Xeon with AVX-512
# and AMX, the largest difference: 1.6e-6 on a quiet machine (2026-12-06); 1.16e-5 and 1.32e-5,
# on 2 of 524,288 and 1 of 262,144 weights, on CI runs (2026-12-07).
FP32_ATOL, FP32_OUTLIERS, FP32_OF_MOVE = 1e-5, 1e-4, 1e-5


def _assert_same_run(a: Path, b: Path, steps: int = PARAMS["max_steps"]):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    diff = {k: (wb[k] - wa[k]).abs() for k in wa}
    worst = max(diff, key=lambda k: diff[k].max())
    assert diff[worst].max() <= 1.1 * steps * PARAMS["lr"], f"{worst}: {diff[worst].max():.3g}"
    outside = {k: int((d > FP32_ATOL).sum()) for k, d in diff.items()}
    n = sum(d.numel() for d in diff.values())
    assert sum(outside.values()) <= FP32_OUTLIERS * n, {k: v for k, v in outside.items() if v}
    init = load_file(a.parent / "init" / "model.safetensors")
    assert _norm({k: wb[k] - wa[k] for k in wa}) < FP32_OF_MOVE * _norm({k: wa[k] - init[k] for k in init})
    ma, mb = pd.read_parquet(a / "metrics.parquet"), pd.read_parquet(b / "metrics.parquet")
    assert list(ma.columns) == list(mb.columns) and len(ma) == steps
    for col in ma.columns:  # a step's gradient norm carries the last step's rounding, moved by Adam
        rel = 1e-4 if col == "grad_norm" else 1e-5
        assert mb[col].tolist() == pytest.approx(ma[col].tolist(), rel=rel, abs=1e-6), col


@pytest.mark.parametrize("objective,params", [("drdo", DRDO), ("sft", PARAMS), ("edpo", EDPO)])
def test_two_ddp_ranks_reproduce_one_process(inputs, objective, params):
    one = _train(inputs, f"{objective}-1", objective, params, 1)
    two = _train(inputs, f"{objective}-ddp2", objective, params, 2)
    _assert_same_run(one, two)
    assert io.read_provenance(two)["train_examples"] == io.read_provenance(one)["train_examples"]
    assert not list(inputs.glob(f".{objective}-ddp2.*")), "a rank left a temporary output behind"


@pytest.mark.parametrize("objective,params", [("drdo", DRDO), ("edpo", EDPO)])
def test_two_zero2_ranks_reproduce_one_process(inputs, objective, params):
    one = inputs / f"{objective}-1"
    one = _train(inputs, one.name, objective, params, 1) if not one.exists() else one
    zero = _train(inputs, f"{objective}-zero2", objective,
                  {**params, "deepspeed": str(REPO / "config" / "deepspeed" / "zero2.json")}, 2)
    _assert_same_run(one, zero)
    assert (zero / "reward_head.safetensors").exists() == (objective == "drdo")


def test_bf16_one_process_ddp_and_zero2_follow_one_precision_contract(inputs):
    """bf16 on every backend under drdo.trainer's contract (fp32 masters from the fp32 checkpoint,
    bf16 autocast, fp32 gradients): the same losses and weights, the same saved dtype, and rank 0
    evaluates under training's autocast.

    Tolerances: the runs differ only where an fp32 summation-order difference (what the fp32
    tests above allow) flips the bf16 rounding of an activation (2 ranks pack other rows than
    1 process). Each flip moves one value by a bf16 ulp, but the loss sums hundreds of them: the
    first step's loss (the same weights everywhere) within 1e-3 relative, a quarter of a bf16 ulp
    (measured: 3.4e-4). Later steps start from weights that already differ, and this test's large
    learning rate makes the reward head's distillation term, a squared margin, 99% of the third
    step's loss: there 1 process and 2 ranks were 1.4e-3 apart on an AMD EPYC (AVX512-BF16) and
    3e-4 on an Intel Xeon (AMX), so later steps are held to 1e-2. DDP and ZeRO-2 pack the same rows,
    and their losses agree to 1e-4 at every step (measured: 9e-6). Adam moves a weight by ~lr
    whatever its gradient's size, so a weight whose gradient is near zero may move differently;
    all weights together differ by under 2% of what training moved them (measured: 0.8%).
    """
    bf16 = {**DRDO, "dtype": "bfloat16"}
    zero2 = {**bf16, "deepspeed": str(REPO / "config" / "deepspeed" / "zero2.json")}
    one = _train(inputs, "bf16-1", "drdo", bf16, 1)
    runs = {"one": one, "ddp": _train(inputs, "bf16-ddp2", "drdo", bf16, 2),
            "zero2": _train(inputs, "bf16-zero2", "drdo", zero2, 2)}
    init, w_one = load_file(inputs / "init" / "model.safetensors"), load_file(one / "model.safetensors")
    moved = _norm({k: w_one[k] - init[k] for k in init})
    loss = {name: pd.read_parquet(out / "metrics.parquet")["loss"].tolist() for name, out in runs.items()}
    assert loss["zero2"] == pytest.approx(loss["ddp"], rel=1e-4)
    for name, out in runs.items():
        w = load_file(out / "model.safetensors")
        head = load_file(out / "reward_head.safetensors")
        assert {t.dtype for t in (*w.values(), *head.values())} == {torch.float32}, name  # save_dtype's default
        assert _norm({k: w[k] - w_one[k] for k in w_one}) < 0.02 * moved, name
        assert loss[name][0] == pytest.approx(loss["one"][0], rel=1e-3), name
        assert loss[name] == pytest.approx(loss["one"], rel=1e-2), name
        # rank 0's validation is what its saved weights give under training's autocast, not in fp32
        # (1 process and DDP before) nor in pure bf16 (DeepSpeed's bf16 mode before)
        args = (out, inputs / "pairs.parquet", inputs / "oracle.parquet", bf16)
        val = io.read_provenance(out)["validation"]
        assert val == pytest.approx(validation_under(*args, autocast=True), rel=1e-6, abs=1e-7), name
        assert val["loss"] != pytest.approx(validation_under(*args, autocast=False)["loss"], rel=1e-6), name
        assert io.read_provenance(out)["save_dtype"] == "float32"


def _norm(tensors: dict) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values())))


def test_launcher_commands(monkeypatch):
    cmd, env = command(1, 4, ["train", "--params", "{}"])
    assert cmd[1:4] == ["-m", "drdo", "--threads"] and cmd[4] == "4" and env["OMP_NUM_THREADS"] == "4"
    cmd, env = command(2, 4, ["train", "--params", json.dumps({"deepspeed": "z.json"})])
    assert "--use_deepspeed" in cmd and cmd[cmd.index("--num_processes") + 1] == "2" and env["OMP_NUM_THREADS"] == "2"
    assert "--multi_gpu" in command(2, 2, ["--lineage", "abc", "train", "--params", "{}"])[0]
    with pytest.raises(ValueError, match=r"config key resources\.generate\.gpu to 0 or 1"):
        command(2, 2, ["generate", "--params", "{}"], rule="generate")
    # CPU jobs keep freed memory for reuse (no page faults per step); GPU jobs and a user's own setting are left alone
    assert command(0, 1, ["generate"])[1]["MALLOC_MMAP_THRESHOLD_"] == str(1 << 30)
    assert "MALLOC_MMAP_THRESHOLD_" not in command(1, 1, ["generate"])[1]
    # CPU jobs (gpu: 0, or ranks on the CPU by opt-in) see no GPU; GPU jobs get theirs from main()
    for cpu_job in (command(0, 1, ["generate"]), command(2, 2, ["train", "--params", "{}"], cpu=True)):
        assert cpu_job[1]["CUDA_VISIBLE_DEVICES"] == "" and cpu_job[1]["DS_ACCELERATOR"] == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in command(2, 2, ["train", "--params", "{}"])[1]
    # and MKL's strict mode: a CPU job's float32 arithmetic the same from run to run
    monkeypatch.delenv("MKL_CBWR", raising=False)  # (tests/conftest.py sets it for the suite)
    assert command(0, 1, ["train"])[1]["MKL_CBWR"] == "AUTO,STRICT" and "MKL_CBWR" not in command(1, 1, ["train"])[1]
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    monkeypatch.setenv("MKL_CBWR", "AVX512")
    assert not {"MALLOC_TRIM_THRESHOLD_", "MKL_CBWR"} & command(0, 1, ["generate"])[1].keys()


def _saved_step(meta: Path) -> int:
    """The step of the resume state on disk; -1 while there is none (or it is being swapped in)."""
    try:
        return json.loads(meta.read_text())["step"]
    except (OSError, ValueError):
        return -1


def test_zero2_job_killed_midway_resumes_to_the_same_weights(inputs):
    """Resume state under ZeRO-2 (accelerate's save_state: DeepSpeed's checkpoint and every
    rank's RNG): kill a 2-rank job after a save, re-run it, end where an uninterrupted run ends."""
    steps = 40  # long enough to be killed after its second save however fast a step is
    params = {**DRDO, "deepspeed": str(REPO / "config" / "deepspeed" / "zero2.json"), "max_steps": steps}
    full = _train(inputs, "zero2-full", "drdo", params, 2)
    name = "zero2-killed"
    args = ["train", "--objective", "drdo", "--params", json.dumps(params), "--init", str(inputs / "init"),
            "--out", str(inputs / name), "--resume", str(inputs / ".resume" / name), "--save-every", "1",
            "--data", str(inputs / "pairs.parquet"), "--tables", str(inputs / "oracle.parquet")]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'workflow'}:{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "drdo.launch", "--processes", "2", "--cpu-ranks", "--threads", "2",
                             "--", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = inputs / ".resume" / name / "drdo_resume.json"
    deadline = time.monotonic() + 300
    while _saved_step(meta) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "job ended before saving twice"
        time.sleep(0.02)
    # the whole tree, as a cluster's kill would: torchrun starts its ranks in sessions of their own
    tree = [proc_, *proc_.children(recursive=True)] if (proc_ := psutil.Process(proc.pid)) else []
    for p in tree:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    proc.wait()
    assert not (inputs / name).exists()
    _train(inputs, name, "drdo", params, 2)  # without --save-every: a state continues under another interval
    assert "resumed from" in (inputs / f"{name}.log").read_text()
    _assert_same_run(full, inputs / name, steps=steps)
    assert not (inputs / ".resume" / name).exists()
