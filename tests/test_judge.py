"""The judge stage against fake OpenAI-compatible servers on 127.0.0.1 (pytest-httpserver):
protocol, parsing, cache and resumption, budget refusal, faults, and the API key never written.
Requests are counted at the server."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

import judge_support as js
from drdo import cli, io
from drdo.judge import client as jclient
from drdo.judge.prompts import load_template, parse_verdict, render
from drdo.judge.protocol import _agreement
from drdo.winrates import COLUMNS, judge_table, outcome_stats

KEY = "sk-test-DO-NOT-LEAK-3f9a1c7e5b"


# --------------------------------------------------------------------------- a fake judge
def completion(content: str, prompt_tokens: int = 120, completion_tokens: int = 12, finish_reason: str = "stop") -> Response:
    body = {"id": "c", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
    return Response(json.dumps(body), content_type="application/json")


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def longer_wins(request: Request) -> Response:
    """A consistent judge: prefers the summary with more words (A on a tie: position bias)."""
    text = request.get_json()["messages"][0]["content"]
    a, b = _between(text, "Summary A:", "Summary B:"), _between(text, "Summary B:", "FIRST")
    return completion(f"Comparison: one is longer.\nPreferred: {'A' if len(a.split()) >= len(b.split()) else 'B'}")


class Server:
    """Counts requests; answers with ``faults[i]`` for request i, then with ``answer``. Its /v1/models
    lists one model named by its file, as llama.cpp's server does (``weights`` may be swapped)."""

    def __init__(self, httpserver, answer=longer_wins, faults=(), delay: float = 0.0, fail_after: int | None = None):
        self.requests, self.auth, self.lock = 0, set(), threading.Lock()
        self.answer, self.faults, self.delay, self.fail_after = answer, list(faults), delay, fail_after
        self.weights = {"id": "/models/judge-a.Q4_1.gguf", "meta": {"n_params": 134515008, "size": 96576768}}
        httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(self)
        httpserver.expect_request("/v1/models", method="GET").respond_with_handler(self.models)
        self.base_url = httpserver.url_for("/v1")

    def models(self, request: Request) -> Response:
        entry = {**self.weights, "object": "model", "created": int(time.time() * 1000), "owned_by": "llamacpp"}
        return Response(json.dumps({"object": "list", "data": [entry]}), content_type="application/json")

    def __call__(self, request: Request) -> Response:
        with self.lock:
            i = self.requests
            self.requests += 1
            self.auth.add(request.headers.get("Authorization"))
        if self.delay:
            time.sleep(self.delay)
        if i < len(self.faults):
            return self.faults[i](request)
        if self.fail_after is not None and i >= self.fail_after:
            return Response(json.dumps({"error": {"message": "overloaded"}}), status=500, content_type="application/json")
        return self.answer(request)


def rate_limited(request):
    return Response(json.dumps({"error": {"message": "slow down"}}), status=429, headers={"retry-after": "0.1"},
                    content_type="application/json")


def server_error(request):
    return Response("internal error", status=500)


def too_slow(request):
    time.sleep(1.5)  # past timeout_s=0.5: the client gives up and retries
    return longer_wins(request)


def malformed(request):
    return Response('{"choices": [', content_type="application/json")


def no_choices(request):
    return Response('{"object": "chat.completion"}', content_type="application/json")


@pytest.fixture
def httpserver():
    """A threaded fake server on 127.0.0.1 (the plugin's default is single-threaded on localhost)."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def inputs(tmp_path):
    return js.make_inputs(tmp_path / "in")


def judge(inputs, out, **overrides):
    """The stage in this process (fast); raises what the stage raises."""
    cli.main(js.argv(inputs, out, js.params(**overrides)))
    return pd.read_csv(out / "judge_report.csv"), io.read_parquet(out / "judge" / "verdicts.parquet")


def expected_outcome(v: pd.DataFrame) -> pd.Series:
    a, b = v["response_a"].str.split().str.len(), v["response_b"].str.split().str.len()
    return pd.Series(np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5)), index=v.index)


# --------------------------------------------------------------------------- parsing and templates
def test_parse_verdict():
    assert parse_verdict("Comparison: A is shorter.\nPreferred: A") == "A"
    assert parse_verdict('Comparison: x\n**Preferred:** "B"') == "B"
    assert parse_verdict("Preferred: A\nOn reflection...\nPreferred: B") == "B"  # the last line counts
    assert parse_verdict('{"comparison": "b is precise", "preferred": "B"}') == "B"
    assert parse_verdict('{"comparison": "x", "preferred": "C"}') is None
    for garbage in ("", None, "Both are fine.", "Preferred: both", "Preferred: Alice", "I prefer A",
                    "Preferred: a or b"):
        assert parse_verdict(garbage) is None, garbage


def test_templates(tmp_path):
    t = load_template(js.REPO / "config/judge_prompts/summary_pairwise.txt")
    text = render(t, {"document": "alice lost the keys.", "reference": "REF", "response_a": "{response_b}",
                      "response_b": "SECOND", "document_kind": "forum post", "Document_kind": "Forum post",
                      "prompt": "p"})
    assert "Forum post:\nalice lost the keys." in text and "Summary A:\n{response_b}" in text  # one pass
    assert "REF" in text and "SECOND" in text and text.rstrip().endswith('Preferred: <"A" or "B">')
    bad = tmp_path / "bad.txt"
    bad.write_text("Compare {response_a} with {responze_b}")
    with pytest.raises(ValueError, match="responze_b"):
        load_template(bad)
    with pytest.raises(FileNotFoundError, match="judge.prompts"):
        load_template(tmp_path / "missing.txt")


def test_judge_table_reuses_the_winrate_interval():
    v = pd.DataFrame({"eval_set": "tldr", "split": "all", "policy_a": "drdo", "policy_b": "dpo", "temperature": 0.7,
                      "prompt_id": [f"p{i}" for i in range(6)], "outcome": [1, 1, 0.5, 0, np.nan, 1]})
    t = judge_table(v)
    assert list(t.columns) == COLUMNS and t.loc[0, "scorer"] == "judge"
    assert (t.loc[0, "wins"], t.loc[0, "ties"], t.loc[0, "losses"], t.loc[0, "n"]) == (3, 1, 1, 5)
    assert t.loc[0, "win_rate"] == pytest.approx(0.7)
    # the score rows' interval (outcome_stats), of the 5 usable outcomes
    usable = outcome_stats(np.array([1, 1, 0.5, 0, 1.0]))
    assert (t.loc[0, "ci_low"], t.loc[0, "ci_high"]) == pytest.approx((usable["ci_low"], usable["ci_high"]), abs=1e-12)
    assert 0 <= t.loc[0, "ci_low"] <= 0.7 <= t.loc[0, "ci_high"] <= 1
    none = judge_table(v.assign(outcome=np.nan))  # nothing usable: no rate invented
    assert none.loc[0, "n"] == 0 and np.isnan(none.loc[0, "win_rate"])


def test_agreement_counts_decisive_verdicts_where_the_scorer_differs():
    """Five prompts: A wins where gold ranks A higher (agree), A loses where gold ranks A higher
    (disagree), A wins where gold ranks B higher (disagree); a tie and an equal gold pair are not
    counted: 1 of 3."""
    g = pd.DataFrame({"outcome": [1.0, 0.0, 1.0, 0.5, 1.0], "gold_a": [2.0, 1.0, 0.0, 5.0, 1.0],
                      "gold_b": [1.0, 0.0, 3.0, 1.0, 1.0]})
    agree, n = _agreement(g, "gold")
    assert n == 3 and agree == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- protocol, cache, winrates
def test_consistent_judge_both_orders_cache_and_winrates(httpserver, inputs, tmp_path):
    srv = Server(httpserver)
    out = tmp_path / "out"
    p = js.params(base_url=srv.base_url, max_concurrency=3)
    n_calls = js.expected_calls(inputs, p)
    report, v = judge(inputs, out, base_url=srv.base_url, max_concurrency=3)
    assert srv.requests == n_calls and sorted(js.cache_keys(out)) == sorted(set(js.cache_keys(out)))
    # 2 comparisons x 2 eval sets x 3 prompts, each judged in both orders; the faithful writer
    # (drdo) wrote the reference's very text on 3 prompts: ties, not asked
    assert len(v) == 12 and v["identical"].sum() == 3 and srv.requests == 2 * 9
    assert (v.loc[~v["identical"], "raw_ab"].str.contains("Preferred")).all()
    pd.testing.assert_series_equal(v["outcome"], expected_outcome(v), check_names=False)
    assert (report["wins"] + report["ties"] + report["losses"] == report["n"]).all()
    assert (report["n"] + report["dropped"] == 3).all() and (report["dropped"] == 0).all()
    asked = 3 - report["identical"]
    assert (report["calls"] == 2 * asked).all() and (report["prompt_tokens"] == 2 * asked * 120).all()
    assert report["cost_usd"].sum() == pytest.approx(9 * 2 * (120 * 2.5 + 12 * 10.0) / 1e6, abs=5e-4)  # CSV: 4 decimals
    # a consistent judge ties only where it follows the position: on the pairs it was asked about
    assert report["position_flip_rate"].eq((report["ties"] - report["identical"]) / asked).all()
    # the judge's agreement with the synthetic world's gold reward, on decisive verdicts
    assert report["gold_agreement_n"].sum() > 0 and report["gold_agreement"].between(0, 1).any()
    assert report["oracle_agreement_n"].sum() > 0

    # rerunning makes no call; the outputs are the same
    judge(inputs, out, base_url=srv.base_url)
    assert srv.requests == n_calls
    pd.testing.assert_frame_equal(io.read_parquet(out / "judge" / "verdicts.parquet"), v)

    # winrates.csv gets scorer=judge rows with the same counts and the score interval
    scores = [str(f) for f in inputs["scores"].values()]
    wparams = {"scorers": ["oracle", "gold"], "unfinished": "as_scored", "splits": ["all"], "methods": ["drdo", "dpo"]}
    cli.main(["winrates", "--params", json.dumps(wparams), "--scores", *scores,
              "--out", str(out / "winrates.csv"), "--judge", str(out / "judge" / "verdicts.parquet")])
    w = pd.read_csv(out / "winrates.csv")
    jw = w[w["scorer"] == "judge"].reset_index(drop=True)
    assert list(w.columns) == COLUMNS and len(jw) == len(report)
    assert (jw[["wins", "ties", "losses", "n"]].to_numpy() == report[["wins", "ties", "losses", "n"]].to_numpy()).all()
    assert (jw["n_dropped"] == report["dropped"]).all() and jw["n_too_long"].isna().all()
    assert (w.loc[w["scorer"] != "judge", "n_too_long"] == 0).all()
    lines = (out / "winrates.csv").read_text().splitlines()
    assert lines[0].endswith(",n_too_long,n_dropped") and not any("." in x for r in lines[1:] for x in r.split(",")[-2:])
    assert ((jw["ci_low"] <= jw["win_rate"]) & (jw["win_rate"] <= jw["ci_high"])).all()
    assert io.read_provenance(out / "winrates.csv")["inputs"]["judge"]["sha256"]


def test_position_biased_judge_gives_ties(httpserver, inputs, tmp_path):
    srv = Server(httpserver, answer=lambda r: completion("Comparison: the first.\nPreferred: A"))
    report, v = judge(inputs, tmp_path / "out", base_url=srv.base_url)
    assert (v["outcome"] == 0.5).all()
    assert (report["position_flip_rate"] == 1).all() and (report["first_position_win_rate"] == 1).all()
    assert (report["win_rate"] == 0.5).all() and report["gold_agreement_n"].sum() == 0


def test_identical_responses_are_ties_without_a_call_and_no_position_flip(httpserver, inputs, tmp_path):
    # DPO writes DRDO's very text on the first prompt of each eval set
    drdo = io.read_parquet(inputs["scores"]["drdo-all"]).set_index(["eval_set", "prompt_id", "temperature"])
    dpo = io.read_parquet(inputs["scores"]["dpo-all"])
    first = dpo["prompt_id"].str.endswith("-0")
    dpo.loc[first, "response"] = drdo.loc[pd.MultiIndex.from_frame(dpo.loc[first, drdo.index.names]), "response"].to_numpy()
    copied = {**inputs, "scores": {**inputs["scores"], "dpo-all": tmp_path / "dpo-all.parquet"}}
    io.write_parquet(dpo, copied["scores"]["dpo-all"], {"stage": "test"})
    srv = Server(httpserver)
    report, v = judge(copied, tmp_path / "out", base_url=srv.base_url)
    same = v["response_a"] == v["response_b"]
    assert v["identical"].equals(same) and same[v["policy_b"] == "dpo"].sum() == 2
    assert srv.requests == js.expected_calls(copied, js.params(base_url=srv.base_url)) == 2 * (~same).sum()
    assert (v.loc[same, "outcome"] == 0.5).all() and v.loc[same, ["raw_ab", "raw_ba", "verdict_ab"]].isna().all().all()
    pair = report[report["policy_b"] == "dpo"]
    assert (pair["identical"] == 1).all() and (pair["n"] == 3).all() and (pair["calls"] == 4).all()
    asked = v[~same & (v["policy_b"] == "dpo")]
    for eval_set, row in pair.set_index("eval_set").iterrows():  # position statistics on the pairs asked only
        a = asked[asked["eval_set"] == eval_set]
        assert row["position_flip_rate"] == pytest.approx((a["outcome"] == 0.5).mean())
        single = pd.concat([a["verdict_ab"], a["verdict_ba"]])
        assert row["first_position_win_rate"] == pytest.approx((single == "A").mean())
    assert (report["unusable_verdicts"] == 0).all() and (report["dropped"] == 0).all()


def test_garbage_verdicts_are_dropped_counted_and_stored(httpserver, inputs, tmp_path, caplog):
    def some_garbage(request):  # on news, answers cut short at max_tokens before any verdict
        text = request.get_json()["messages"][0]["content"]
        return completion("Both summaries are great! The first", finish_reason="length") if "news article" in text \
            else longer_wins(request)

    srv = Server(httpserver, answer=some_garbage)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="drdo.judge"):
        report, v = judge(inputs, out, base_url=srv.base_url, comparisons=[["drdo", "dpo"], ["edpo", "dpo"]])
    # half of the verdicts, but whole comparisons without a usable outcome: said in the log, not only the CSV
    warnings = [r.getMessage() for r in caplog.records if r.name == "drdo.judge" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("12 of 24 judge verdicts (50%) are unusable")
    assert "; 2 of 4 comparisons have no usable outcome" in warnings[0] and "judge.response_format: json_schema" in warnings[0]
    assert "; 12 answers were cut short at judge.max_tokens=256" in warnings[0]
    news = report[report["eval_set"] == "news"]
    assert (news["n"] == 0).all() and (news["dropped"] == 3).all() and (news["unusable_verdicts"] == 6).all()
    assert (news["cut_short"] == 6).all() and (report.loc[report["eval_set"] == "tldr", "cut_short"] == 0).all()
    assert news["win_rate"].isna().all()
    tldr = report[report["eval_set"] == "tldr"]
    assert (tldr["dropped"] == 0).all() and (tldr["n"] == 3).all()
    assert (v.loc[v["eval_set"] == "news", "raw_ab"] == "Both summaries are great! The first").all()  # kept to re-parse
    assert (v.loc[v["eval_set"] == "news", ["finish_reason_ab", "finish_reason_ba"]] == "length").all().all()
    before = srv.requests
    judge(inputs, out, base_url=srv.base_url, comparisons=[["drdo", "dpo"], ["edpo", "dpo"]])  # unusable answers are paid answers: cached, not asked again
    assert srv.requests == before


def test_mostly_unusable_verdicts_warn_with_count_share_and_what_to_try(httpserver, inputs, tmp_path, caplog):
    def news_first_longer(request):  # a usable verdict only on news, and only when A is the longer summary
        text = request.get_json()["messages"][0]["content"]
        a, b = _between(text, "Summary A:", "Summary B:"), _between(text, "Summary B:", "FIRST")
        if "news article" in text and len(a.split()) >= len(b.split()):
            return completion("Preferred: A")
        return completion("I cannot decide.")

    srv = Server(httpserver, answer=news_first_longer)
    with caplog.at_level(logging.WARNING, logger="drdo.judge"):
        report, v = judge(inputs, tmp_path / "out", base_url=srv.base_url, response_format="json_schema",
                          comparisons=[["drdo", "dpo"], ["edpo", "dpo"]])
    unusable = int(v["verdict_ab"].isna().sum() + v["verdict_ba"].isna().sum())
    assert 0.5 < unusable / 24 < 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "drdo.judge" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"{unusable} of 24 judge verdicts ({unusable / 24:.0%}) are unusable")
    assert "check that the server honours response_format" in warnings[0]  # the hint fits the format used
    assert (tmp_path / "out" / "judge_report.csv").exists()  # a warning: the job still finishes


def test_a_judge_without_one_usable_verdict_fails_saying_what_to_try(httpserver, inputs, tmp_path):
    srv = Server(httpserver, answer=lambda r: completion("Both are fine, really."))
    out = tmp_path / "out"
    with pytest.raises(jclient.JudgeError) as err:
        judge(inputs, out, base_url=srv.base_url, comparisons=[["drdo", "dpo"], ["edpo", "dpo"]])
    msg = str(err.value)
    assert msg.startswith("24 of 24 judge verdicts (100%) are unusable") and "no judge win-rate can be computed" in msg
    assert "The first answer was 'Both are fine, really.'" in msg and "judge.response_format: json_schema" in msg
    assert not (out / "judge_report.csv").exists() and not (out / "judge" / "verdicts.parquet").exists()
    assert len(js.cache_keys(out)) == srv.requests  # every answer kept: a rerun pays nothing


def test_usable_verdicts_no_warning_and_progress_lines(httpserver, inputs, tmp_path, caplog):
    srv = Server(httpserver)
    with caplog.at_level(logging.INFO, logger="drdo.judge"):
        judge(inputs, tmp_path / "out", base_url=srv.base_url)
    records = [r for r in caplog.records if r.name == "drdo.judge"]
    assert not [r for r in records if r.levelno >= logging.WARNING]
    progress = [r.getMessage() for r in records if r.getMessage().startswith("judge: ")]
    assert progress[0].startswith(f"judge: 1/{srv.requests} calls (") and " calls/s, ETA " in progress[0]
    assert progress[-1].startswith(f"judge: {srv.requests}/{srv.requests} calls (100%)") and "$" in progress[-1]


# --------------------------------------------------------------------------- faults
@pytest.mark.parametrize("fault,n_faults", [(rate_limited, 2), (server_error, 2), (too_slow, 1), (malformed, 2),
                                            (no_choices, 1)])
def test_transient_faults_are_retried_and_each_answer_paid_once(httpserver, inputs, tmp_path, fault, n_faults):
    srv = Server(httpserver, faults=[fault] * n_faults)
    out = tmp_path / "out"
    p = js.params(base_url=srv.base_url, timeout_s=0.5, max_retries=3)
    n_calls = js.expected_calls(inputs, p)
    report, v = judge(inputs, out, base_url=srv.base_url, timeout_s=0.5, max_retries=3)
    keys = js.cache_keys(out)
    assert srv.requests == n_calls + n_faults  # every fault cost one request; every answer came once
    assert len(keys) == len(set(keys)) == n_calls
    pd.testing.assert_series_equal(v["outcome"], expected_outcome(v), check_names=False)


def test_persistent_failure_ends_the_job_with_an_error(httpserver, inputs, tmp_path):
    srv = Server(httpserver, answer=server_error)
    out = tmp_path / "out"
    with pytest.raises(jclient.JudgeError, match=r"HTTP 500 still failing after 2 retries"):
        judge(inputs, out, base_url=srv.base_url, max_retries=2)
    assert srv.requests == 3  # one call, 2 retries, then no new call starts
    assert not (out / "judge_report.csv").exists() and not (out / "judge").exists()


def test_client_error_stops_at_once_naming_status_and_message(httpserver, inputs, tmp_path):
    srv = Server(httpserver, answer=lambda r: Response(json.dumps({"error": {"message": "model 'x' does not exist"}}),
                                                       status=404, content_type="application/json"))
    with pytest.raises(jclient.JudgeError, match=r"HTTP 404 refused.*model 'x' does not exist"):
        judge(inputs, tmp_path / "out", base_url=srv.base_url, max_retries=5)
    assert srv.requests == 1


def test_budget_refusal_names_the_key_and_estimate(httpserver, inputs, tmp_path):
    srv = Server(httpserver)
    p = js.params(base_url=srv.base_url)
    n_calls = js.expected_calls(inputs, p)
    with pytest.raises(jclient.JudgeError, match=rf"judge.max_requests=5: this job needs {n_calls} new calls"):
        judge(inputs, tmp_path / "a", base_url=srv.base_url, max_requests=5)
    with pytest.raises(jclient.JudgeError, match=r"judge.max_usd=0.01: .* estimated at \$0\.\d\d"):
        judge(inputs, tmp_path / "a", base_url=srv.base_url, max_usd=0.01,
              prices={"input_per_mtok": 30.0, "output_per_mtok": 60.0})
    assert srv.requests == 0
    # only new calls count: with everything cached, a zero budget is enough
    judge(inputs, tmp_path / "a", base_url=srv.base_url)
    judge(inputs, tmp_path / "a", base_url=srv.base_url, max_requests=0, max_usd=0)
    assert srv.requests == n_calls


# --------------------------------------------------------------------------- resumption
def test_failed_job_keeps_its_answers_and_a_rerun_pays_only_the_rest(httpserver, inputs, tmp_path):
    srv = Server(httpserver, fail_after=7)
    out = tmp_path / "out"
    p = js.params(base_url=srv.base_url, max_retries=1)
    n_calls = js.expected_calls(inputs, p)
    with pytest.raises(jclient.JudgeError, match="7 answers are cached"):
        judge(inputs, out, base_url=srv.base_url, max_retries=1)
    assert len(js.cache_keys(out)) == 7 and not (out / "judge_report.csv").exists()
    srv.fail_after, before = None, srv.requests  # the server recovers
    judge(inputs, out, base_url=srv.base_url)
    assert srv.requests - before == n_calls - 7
    assert sorted(js.cache_keys(out)) == sorted(set(js.cache_keys(out))) and len(js.cache_keys(out)) == n_calls


def test_killed_job_rerun_pays_only_for_calls_not_yet_made(httpserver, inputs, tmp_path):
    srv = Server(httpserver, delay=0.15)
    out = tmp_path / "out"
    p = js.params(base_url=srv.base_url)
    n_calls = js.expected_calls(inputs, p)
    proc = js.run_stage(inputs, out, p, background=True)
    deadline = time.time() + 120
    while srv.requests < 8 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run, a call in flight
    proc.wait()
    paid_before_kill, cached = srv.requests, len(js.cache_keys(out))
    assert 0 < cached < n_calls and not (out / "judge_report.csv").exists()
    assert paid_before_kill - cached <= 1  # at most the call in flight at the kill is lost
    rc, log = js.run_stage(inputs, out, p)
    assert rc == 0, log
    assert srv.requests - paid_before_kill == n_calls - cached
    assert f"{cached} cached, {n_calls - cached} to make" in log
    keys = js.cache_keys(out)
    assert len(keys) == len(set(keys)) == n_calls
    # the outputs are those of an uninterrupted run, and nothing half-written is left beside them
    whole = tmp_path / "whole"
    rc, log = js.run_stage(inputs, whole, p)
    assert rc == 0, log
    pd.testing.assert_frame_equal(io.read_parquet(out / "judge" / "verdicts.parquet"),
                                  io.read_parquet(whole / "judge" / "verdicts.parquet"))
    assert (out / "judge_report.csv").read_bytes() == (whole / "judge_report.csv").read_bytes()
    assert sorted(p.name for p in (out / "judge").iterdir()) == ["verdicts.parquet"]


def test_truncated_cache_line_is_skipped_and_that_call_made_again(httpserver, inputs, tmp_path):
    srv = Server(httpserver)
    out = tmp_path / "out"
    judge(inputs, out, base_url=srv.base_url)
    cache = out / ".judge_cache" / "judge.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:-1]) + lines[-1][:40])  # a kill in the middle of the last write
    before = srv.requests
    judge(inputs, out, base_url=srv.base_url)
    assert srv.requests - before == 1
    # the answer made again is kept: not glued onto the torn line and lost on the next read
    assert all(json.loads(line)["key"] for line in cache.read_text().splitlines())
    judge(inputs, out, base_url=srv.base_url)
    assert srv.requests - before == 1


# --------------------------------------------------------------------------- what answers: the cache key
def test_new_weights_behind_the_same_name_are_asked_again(httpserver, inputs, tmp_path):
    srv = Server(httpserver)
    out = tmp_path / "out"
    n_calls = js.expected_calls(inputs, js.params(base_url=srv.base_url))
    judge(inputs, out, base_url=srv.base_url)
    judge(inputs, out, base_url=srv.base_url)
    assert srv.requests == n_calls  # same server, same weights: all cached
    # the same name, other weights loaded behind it (llama.cpp reports the file and its size)
    srv.weights = {"id": "/models/judge-b.Q8_0.gguf", "meta": {"n_params": 134515008, "size": 144811008}}
    judge(inputs, out, base_url=srv.base_url)
    assert srv.requests == 2 * n_calls
    prov = io.read_provenance(out / "judge" / "verdicts.parquet")
    assert prov["run"]["server"]["served"]["id"] == "/models/judge-b.Q8_0.gguf"
    servers = {json.loads(line)["server"] for line in (out / ".judge_cache" / "judge.jsonl").read_text().splitlines()}
    assert len(servers) == 2 and prov["run"]["model_id"] in servers  # each answer says what gave it


def test_another_endpoint_with_the_same_model_is_asked_again(httpserver, inputs, tmp_path):
    first = Server(httpserver)
    out = tmp_path / "out"
    n_calls = js.expected_calls(inputs, js.params(base_url=first.base_url))
    judge(inputs, out, base_url=first.base_url)
    other_http = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    other_http.start()
    try:
        other = Server(other_http)  # lists the very same model entry
        judge(inputs, out, base_url=other.base_url)
        assert first.requests == other.requests == n_calls
    finally:
        other_http.clear()
        other_http.stop()


def test_weights_swapped_during_the_run_are_refused_and_not_kept(httpserver, inputs, tmp_path):
    srv = Server(httpserver)
    out = tmp_path / "out"
    swapped = {"id": "/models/judge-b.Q8_0.gguf", "meta": {"n_params": 360000000, "size": 386404992}}

    def swap_after_three(request):
        with srv.lock:
            if srv.requests == 4:
                srv.weights = swapped
        return longer_wins(request)

    srv.answer = swap_after_three
    with pytest.raises(jclient.JudgeError, match="changed what it serves during the run"):
        judge(inputs, out, base_url=srv.base_url)
    assert not (out / "judge_report.csv").exists() and not (out / "judge" / "verdicts.parquet").exists()
    assert js.cache_keys(out) == []  # no answer of that run is reused, from either server
    before = srv.requests
    srv.answer = longer_wins
    judge(inputs, out, base_url=srv.base_url)
    assert srv.requests - before == js.expected_calls(inputs, js.params(base_url=srv.base_url))


def test_endpoint_without_models_listing_is_keyed_by_its_url(httpserver, inputs, tmp_path, caplog):
    srv = Server(httpserver)
    httpserver.clear()  # no /v1/models any more: a 404-answering server
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(srv)
    httpserver.expect_request("/v1/models", method="GET").respond_with_data("not found", status=404)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        judge(inputs, out, base_url=srv.base_url)
    assert "has no /models" in caplog.text
    n = srv.requests
    judge(inputs, out, base_url=srv.base_url)
    assert srv.requests == n


class _Overpriced:
    """A fake client whose calls cost ``factor`` x their estimate (the server counts more tokens than
    estimated); it tallies the real spend."""

    def __init__(self, prices, factor):
        self.prices, self.factor, self.spent, self.lock = prices, factor, 0.0, threading.Lock()

    def complete(self, call):
        time.sleep(0.02)
        usd = jclient.estimate([call], self.prices)["usd"] * self.factor
        tokens = round(usd * 1e6 / self.prices["input_per_mtok"])
        with self.lock:
            self.spent += jclient.cost_usd(tokens, 0, self.prices)
        return {"key": call.key, "content": "Preferred: A", "finish_reason": "stop", "prompt_tokens": tokens,
                "completion_tokens": 0}


def test_max_usd_counts_the_calls_in_flight(tmp_path):
    """judge.max_usd is checked against the spend plus the estimate of every call in flight: the
    spend passes the limit by no more than the calls' own underestimates (20% here), never by
    whole calls started while others were in flight."""
    prices = {"input_per_mtok": 2.5, "output_per_mtok": 0.0}
    calls = [jclient.Call(f"k{i}", [{"role": "user", "content": "x" * 300}],
                          {"temperature": 0.0, "max_tokens": 16}) for i in range(20)]
    one = jclient.estimate(calls[:1], prices)["usd"]
    max_usd = jclient.estimate(calls, prices)["usd"]  # the job's estimate fits the limit exactly
    client = _Overpriced(prices, factor=1.2)
    with pytest.raises(jclient.JudgeError, match="max_usd"):
        jclient.run_calls(calls, client, jclient.CallCache(tmp_path / "cache.jsonl"), 4, prices, max_usd, None)
    assert client.spent <= max_usd + 4 * 0.2 * one + 1e-12


# --------------------------------------------------------------------------- the API key
def grep_tree(root: Path, secret: str) -> list[Path]:
    return [f for f in root.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]


def test_key_is_sent_but_never_written(httpserver, inputs, tmp_path):
    srv = Server(httpserver)
    out = tmp_path / "out"
    p = js.params(base_url=srv.base_url, api_key_env="DRDO_TEST_JUDGE_KEY")
    rc, log = js.run_stage(inputs, out, p, env={"DRDO_TEST_JUDGE_KEY": KEY}, log=tmp_path / "logs" / "judge.log")
    assert rc == 0, log
    assert srv.auth == {f"Bearer {KEY}"}  # the key from the environment variable reached the server
    assert grep_tree(tmp_path, KEY) == []  # not in the outputs, the cache, the provenance or the log
    assert "DRDO_TEST_JUDGE_KEY" in json.dumps(io.read_provenance(out / "judge_report.csv")["config"])


def test_rejected_key_error_is_redacted(httpserver, inputs, tmp_path, monkeypatch):
    # servers echo (part of) a wrong key in their message; the job's error and log must not
    srv = Server(httpserver, answer=lambda r: Response(
        json.dumps({"error": {"message": f"Incorrect API key provided: {r.headers['Authorization'][7:]}"}}),
        status=401, content_type="application/json"))
    monkeypatch.setenv("DRDO_TEST_JUDGE_KEY", KEY)
    log = logging.FileHandler(tmp_path / "judge.log")
    logging.getLogger().addHandler(log)
    try:
        with pytest.raises(jclient.JudgeError) as err:
            judge(inputs, tmp_path / "out", base_url=srv.base_url, api_key_env="DRDO_TEST_JUDGE_KEY")
    finally:
        logging.getLogger().removeHandler(log)
        log.close()
    assert srv.requests == 1 and srv.auth == {f"Bearer {KEY}"}
    assert "HTTP 401" in str(err.value) and "Incorrect API key provided: [REDACTED]" in str(err.value)
    assert grep_tree(tmp_path, KEY) == []


def test_missing_key_variable_is_named(inputs, tmp_path, monkeypatch):
    monkeypatch.delenv("DRDO_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(jclient.JudgeError, match="environment variable DRDO_TEST_JUDGE_KEY is not set "
                                                 r"\(config key judge.api_key_env"):
        judge(inputs, tmp_path / "out", base_url="http://127.0.0.1:9/v1", api_key_env="DRDO_TEST_JUDGE_KEY")


# --------------------------------------------------------------------------- the workflow
def dry_run(tmp_path, override: str, *flags: str):
    (tmp_path / "o.yaml").write_text(override)
    cmd = [sys.executable, "-m", "snakemake", "-n", *flags, "--snakefile", str(js.REPO / "Snakefile"), "--directory",
           str(tmp_path), "--cores", "2", "--configfile", str(js.REPO / "tests/configs/e2e.yaml"),
           str(tmp_path / "o.yaml"), "--", "results/e2e/winrates.csv"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("generated, judged", [("[0.5, 0.9]", [0.5]), ("[0.2, 0.8, 1.0]", [0.8]),
                                               ("[0.2, 0.5, 0.7, 0.9]", [0.7])])
def test_judge_temperatures_default_to_the_generated_one_closest_to_0_7(tmp_path, generated, judged):
    """Enabling the judge works whatever temperatures are generated (the e2e config: 0.5 and 0.9)."""
    proc = dry_run(tmp_path, f"generate: {{temperatures: {generated}}}\n"
                             "judge: {enabled: true, splits: [all], comparisons: [[drdo, dpo]]}\n", "-p")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    command = proc.stdout.split("rule judge:", 1)[1].split("python -m drdo", 1)[1].split("\n", 1)[0]
    params = json.loads(command.split("--params '", 1)[1].split("'", 1)[0])
    assert params["temperatures"] == judged


def test_workflow_adds_the_judge_only_when_enabled(tmp_path):
    off = dry_run(tmp_path, "judge: {enabled: false}")
    assert off.returncode == 0 and "rule judge:" not in off.stdout and "judge_report" not in off.stdout
    on = dry_run(tmp_path, "judge: {enabled: true, splits: [all], comparisons: [[drdo, dpo]], temperatures: [0.9]}")
    assert on.returncode == 0, on.stderr
    assert "rule judge:" in on.stdout and "results/e2e/judge_report.csv" in on.stdout
    winrates = on.stdout.split("rule winrates:", 1)[1].split("jobid", 1)[0]
    assert "results/e2e/judge/verdicts.parquet" in winrates  # the judge rows feed winrates.csv
    judge_inputs = on.stdout.split("rule judge:", 1)[1].split("output:", 1)[0]
    assert "scores/drdo-all.parquet" in judge_inputs and "scores/drdo-hc_he.parquet" not in judge_inputs


@pytest.mark.parametrize("override,named", [
    ("judge: {enabled: true, temperatures: [0.7]}", "judge.temperatures"),   # e2e generates at 0.5 and 0.9
    ("judge: {enabled: true, temperatures: [0.9], comparisons: [[drdo, drdo]]}", "judge.comparisons"),
    ("judge: {enabled: true, api_key: sk-SECRET-1}", "judge.api_key is not a setting"),  # refused
    ("judge: {api_key_env: sk-proj-SECRET-123}", "judge.api_key_env must be the NAME"),  # ... and not echoed
])
def test_bad_judge_config_stops_before_any_job(tmp_path, override, named):
    proc = dry_run(tmp_path, override)
    assert proc.returncode != 0 and named in proc.stdout + proc.stderr
    assert "SECRET" not in proc.stdout + proc.stderr
