"""Shared by the judge tests: small scored inputs from the synthetic world, the stage's
arguments, and a loopback proxy that counts the calls a server receives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from drdo import gold, io, synthetic
from drdo.judge import protocol

REPO = Path(__file__).resolve().parents[1]
JUDGE_DEFAULTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["judge"]
TEMPLATES = [f"{k}={REPO / v}" for k, v in JUDGE_DEFAULTS["prompts"].items()]
# responses of each policy: a simulated writer of the synthetic world, so gold rewards differ
WRITERS = {"sft": "omit", "drdo-all": "faithful", "dpo-all": "hallucinate", "edpo-all": "pad"}


def make_inputs(root: Path, n_prompts: int = 3, temperatures=(0.7,), seed: int = 0) -> dict:
    """eval_prompts.parquet and scores/{policy}.parquet like the workflow's, on ``root``."""
    rng = np.random.default_rng(seed)
    prompts = []
    for eval_set, style, facts, filler in (("tldr", "tldr", (2, 3), (1, 2)), ("news", "news", (3, 3), (2, 3))):
        for i in range(n_prompts):
            doc, doc_facts = synthetic.make_document(rng, facts, filler, style)
            ref = synthetic.join_facts(synthetic.reference_facts(rng, doc_facts, 0.0))
            prompts.append({"eval_set": eval_set, "prompt_id": f"{eval_set}-{i}", "document": doc,
                            "prompt": f"POST: {doc}\nTL;DR:", "reference": ref, "facts": doc_facts})
    p = pd.DataFrame(prompts)
    io.write_parquet(p.drop(columns="facts"), root / "eval_prompts.parquet", {"stage": "test"})
    paths = {}
    for policy, writer in WRITERS.items():
        rows = [{"eval_set": r.eval_set, "prompt_id": r.prompt_id, "temperature": t,
                 "response": synthetic.candidate_summary(rng, r.facts, writer), "document": r.document}
                for r in p.itertuples() for t in temperatures]
        paths[policy] = _scores(pd.DataFrame(rows), policy, root)
    ref = p.assign(temperature=np.nan, response=p["reference"])
    paths["reference"] = _scores(ref, "reference", root)
    return {"prompts": root / "eval_prompts.parquet", "scores": paths}


def _scores(df: pd.DataFrame, policy: str, root: Path) -> Path:
    name, split = (policy.split("-", 1) + ["-"])[:2]
    out = df[["eval_set", "prompt_id", "temperature", "response"]].assign(
        policy=name, split=split, oracle=np.random.default_rng(len(policy)).normal(size=len(df)),
        gold=gold.gold_rewards(df["document"], df["response"]), finished=True, too_long=False)
    path = root / "scores" / f"{policy}.parquet"
    io.write_parquet(out, path, {"stage": "test"})
    return path


def params(**overrides) -> dict:
    p = {k: v for k, v in JUDGE_DEFAULTS.items() if k not in ("enabled", "prompts")}
    p.update(methods=["drdo", "dpo", "edpo"], gold=True, splits=["all"], temperatures=[0.7], n_prompts=3,
             comparisons=[["drdo", "dpo"], ["reference", "drdo"]], api_key_env=None, max_concurrency=1,
             timeout_s=10, max_retries=2)
    p.update(overrides)
    return p


def argv(inputs: dict, out: Path, p: dict) -> list[str]:
    return ["judge", "--params", json.dumps(p), "--scores", *map(str, inputs["scores"].values()),
            "--prompts", str(inputs["prompts"]), "--templates", *TEMPLATES,
            "--cache", str(out / ".judge_cache" / "judge.jsonl"),
            "--out-verdicts", str(out / "judge" / "verdicts.parquet"), "--out-report", str(out / "judge_report.csv")]


def run_stage(inputs: dict, out: Path, p: dict, env: dict | None = None, log: Path | None = None,
              background: bool = False):
    """``python -m drdo judge`` as the rule runs it: a process, stdout and stderr into ``log``."""
    log = log or out / "judge.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "w")
    cmd = [sys.executable, "-m", "drdo", *argv(inputs, out, p)]
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), **(env or {})}
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env)
    if background:
        return proc
    proc.wait(timeout=300)
    fh.close()
    return proc.returncode, log.read_text()


def expected_calls(inputs: dict, p: dict) -> int:
    """Distinct calls the stage needs for ``p`` (both orders of every item; identical prompts once)."""
    from drdo.judge.prompts import load_template

    scores = pd.concat([io.read_parquet(f) for f in inputs["scores"].values()], ignore_index=True)
    items = protocol.plan(scores, io.read_parquet(inputs["prompts"]), p)
    templates = {t.split("=", 1)[0]: load_template(t.split("=", 1)[1]) for t in TEMPLATES}
    return len(protocol.calls(items, templates, p, p["model"])[1])


def cache_keys(out: Path) -> list[str]:
    path = out / ".judge_cache" / "judge.jsonl"
    return [json.loads(line)["key"] for line in path.read_text().splitlines()] if path.exists() else []


class CountingProxy:
    """127.0.0.1 proxy in front of a server: forwards every request, counts the chat calls."""

    def __init__(self, upstream: str):
        self.upstream, self.calls, self.lock = upstream.rstrip("/"), 0, threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # /v1/models: what the server says it serves
                self.do_POST(method="GET")

            def do_POST(self, method="POST"):
                body = self.rfile.read(int(self.headers.get("content-length", 0))) if method == "POST" else None
                if self.path.endswith("/chat/completions"):
                    with proxy.lock:
                        proxy.calls += 1
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method=method,
                                             headers={"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=600) as r:  # a loaded CI machine is slow
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
