"""The vLLM backend (``generate.backend: vllm``, ``drdo.generation_vllm``) through the generate
stage's command, in a Python that has vLLM: ``DRDO_VLLM_PYTHON`` (CI builds one, see
docs/testing.md), else this one if it imports vllm. What it must keep from the loop: the table,
the prompts (its greedy continuations are the loop's), the textbook nucleus distribution at each
temperature, and draws that depend on the seed but not on the batch. Skips without vLLM unless
``DRDO_REQUIRE_VLLM=1``."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from drdo.base_model import tiny_llama, train_tokenizer
from drdo.batching import encode_prompt

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = os.environ.get("DRDO_VLLM_PYTHON") or (sys.executable if importlib.util.find_spec("vllm") else None)
# head size 32: vLLM's CPU attention takes 32 and up; wide weights give peaked, tie-free logits
ARCH = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 128, "initializer_range": 0.3}
POSTS = ["I locked my keys inside the car again today.", "My cat sat on the mat all day.", "rain",
         "The landlord raised the rent twice this year and I do not know what to do.",
         "Our team lost the final after leading the whole game.", "I finally finished my first marathon!"]
PARAMS = {"temperatures": [0.5, 1.0], "top_p": 0.8, "batch_size": 8, "seed": 0, "backend": "vllm",
          "vllm": {"gpu_memory_utilization": 0.5, "kv_cache_gb": 0.25, "enforce_eager": True},
          "max_prompt_length": 64, "max_new_tokens": 24, "chat_template": False, "dtype": "float32",
          "attn_implementation": "sdpa"}

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    if VLLM_PYTHON is None:
        if os.environ.get("DRDO_REQUIRE_VLLM") == "1":
            pytest.fail("DRDO_REQUIRE_VLLM=1 but no vLLM: set DRDO_VLLM_PYTHON to a Python that imports vllm and drdo")
        pytest.skip("no vLLM here (DRDO_VLLM_PYTHON unset, vllm not importable)")
    d = tmp_path_factory.mktemp("vllm")
    tok = train_tokenizer([f"POST: {p}\nTL;DR: {p[:20]}" for p in POSTS] * 4, vocab_size=300)
    model = tiny_llama(tok, ARCH, seed=0)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    pd.DataFrame({"eval_set": "tldr", "prompt_id": [f"p{i}" for i in range(len(POSTS))],
                  "prompt": [f"POST: {p}\nTL;DR:" for p in POSTS]}).to_parquet(d / "prompts.parquet")
    # one prompt many times over: each row's first token is one draw from the same distribution
    pd.DataFrame({"eval_set": "tldr", "prompt_id": [f"r{i}" for i in range(400)],
                  "prompt": f"POST: {POSTS[3]}\nTL;DR:"}).to_parquet(d / "repeated.parquet")
    # prompts that together outgrow one engine step's token budget (vLLM's CPU default: 2-4k)
    pd.DataFrame({"eval_set": "tldr", "prompt_id": [f"l{i}" for i in range(48)],
                  "prompt": "POST: " + " ".join(POSTS * 2) + "\nTL;DR:"}).to_parquet(d / "long.parquet")
    return d


def generate(case: Path, name: str, prompts: str = "prompts.parquet", python: str | None = None,
             **params) -> pd.DataFrame:
    """The generate stage's own command; vLLM's Python unless ``python`` says otherwise."""
    out = case / f"{name}.parquet"
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [python or VLLM_PYTHON, "-m", "drdo", "--threads", "2", "generate", "--params", json.dumps(PARAMS | params),
           "--policy", str(case / "model"), "--prompts", str(case / prompts), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return pd.read_parquet(out)


def test_vllm_keeps_the_table_and_the_loops_greedy_continuations(case):
    """top_p -> 0 leaves the most likely token alone: both backends must then continue every prompt
    the same way, so vLLM reads the same prompt tokens and end tokens; the table is the loop's."""
    greedy = {"top_p": 1e-6, "max_new_tokens": 16}
    vllm = generate(case, "vllm-greedy", **greedy)
    loop = generate(case, "loop-greedy", python=sys.executable, **greedy, backend="loop")
    assert list(vllm.columns) == list(loop.columns) and (vllm.dtypes == loop.dtypes).all()
    keys = ["eval_set", "prompt_id", "temperature"]
    pd.testing.assert_frame_equal(vllm[keys], loop[keys])
    same = (vllm[["response", "finished", "n_tokens"]] == loop[["response", "finished", "n_tokens"]]).all(axis=1)
    # float32 kernels differ: a near-tie may flip late in a row, never in most rows
    assert same.mean() >= 0.9, pd.concat([vllm, loop.add_suffix("_loop")], axis=1)[~same].to_string()
    assert ((vllm["n_tokens"] == 16) | vllm["finished"]).all()


@pytest.fixture(scope="module")
def reseeded(case):
    """One engine run that serves two tests (an engine start is most of a test's time): the
    repeated prompt's first tokens under another seed, after 48 prompts of 110 tokens that share
    the first batch of 64 rows and together outgrow one engine step."""
    rows = pd.concat([pd.read_parquet(case / "long.parquet"), pd.read_parquet(case / "repeated.parquet")])
    rows.to_parquet(case / "long_then_repeated.parquet")
    return generate(case, "vllm-s1", "long_then_repeated.parquet", seed=1, max_new_tokens=1, batch_size=64,
                    max_prompt_length=110)


def test_vllm_draws_follow_the_nucleus_distribution_and_do_not_depend_on_the_batch(case, reseeded):
    """400 draws of one prompt's first token at each temperature against softmax(logits / T) cut
    to its top-0.8 nucleus and renormalised (computed here with transformers); the same seed gives
    the same rows whatever the batch, another seed other rows."""
    first = {"max_new_tokens": 1, "batch_size": 64}
    drawn = generate(case, "vllm-draws", "repeated.parquet", **first)
    rebatched = generate(case, "vllm-draws-b7", "repeated.parquet", **first | {"batch_size": 7})
    pd.testing.assert_frame_equal(drawn, rebatched)
    keys = ["prompt_id", "temperature"]
    both = drawn.merge(reseeded[reseeded["prompt_id"].str.startswith("r")], on=keys, suffixes=("", "_s1"))
    assert len(both) == len(drawn) and (both["response_s1"] != both["response"]).mean() > 0.2

    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(case / "model")
    model = AutoModelForCausalLM.from_pretrained(case / "model").eval()
    ids = encode_prompt(tok, f"POST: {POSTS[3]}\nTL;DR:", PARAMS["max_prompt_length"], None, False)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    for t in PARAMS["temperatures"]:
        probs = torch.softmax(logits / t, -1)
        p, order = probs.sort(descending=True)
        keep = (p.cumsum(0) - p) < PARAMS["top_p"]
        want: dict[tuple[str, bool], float] = {}
        for prob, token in zip((p[keep] / p[keep].sum()).tolist(), order[keep].tolist()):
            text = tok.decode([token], skip_special_tokens=True).strip()
            key = ("", True) if token == tok.eos_token_id else (text, False)
            want[key] = want.get(key, 0.0) + prob
        rows = drawn[drawn["temperature"] == t]
        got = rows.groupby(["response", "finished"]).size().to_dict()
        assert set(got) <= set(want), f"T={t}: drawn outside the nucleus: {set(got) - set(want)}"
        n = len(rows)
        for key, prob in want.items():
            z = (got.get(key, 0) - n * prob) / math.sqrt(max(n * prob * (1 - prob), 1e-9))
            assert abs(z) < 4.5, f"T={t} {key!r}: {got.get(key, 0)} of {n} drawn, {n * prob:.1f} expected"


def _group(pgid: int) -> list[str]:
    """Command lines of the live processes of a process group."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(" ".join(p.info["cmdline"] or []))
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def test_a_terminated_vllm_job_stops_its_engine_and_writes_nothing(case):
    """SIGTERM (a kill, SLURM's timeout or preemption) once vLLM's engine runs: the job exits, no
    output appears and none of the engine's processes outlives it."""
    import time

    out = case / "terminated.parquet"
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [VLLM_PYTHON, "-m", "drdo", "--threads", "2", "generate", "--params",
           json.dumps(PARAMS | {"max_new_tokens": 64}), "--policy", str(case / "model"),
           "--prompts", str(case / "repeated.parquet"), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any("VLLM::Worker" in c for c in _group(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "vLLM's worker never started"
            time.sleep(0.5)
        proc.terminate()
        assert proc.wait(timeout=60) != 0
        deadline = time.monotonic() + 30
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group(proc.pid), _group(proc.pid)
        assert not out.exists()
    finally:
        if _group(proc.pid):
            os.killpg(proc.pid, 9)


def test_vllm_takes_more_prompt_tokens_than_one_engine_step(case, reseeded):
    """48 prompts of 110 tokens at once: more than a step computes, so the engine would split a
    prompt over steps, which killed vLLM's CPU engine with seeded rows (``generation_vllm.engine``)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(case / "model")
    prompt = pd.read_parquet(case / "long.parquet")["prompt"][0]
    assert len(encode_prompt(tok, prompt, 110, None, False)) == 110
    out = reseeded[reseeded["prompt_id"].str.startswith("l")]
    assert len(out) == 48 * len(PARAMS["temperatures"]) and (out["n_tokens"] + out["finished"] >= 1).all()
