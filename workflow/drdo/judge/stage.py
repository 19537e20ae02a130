"""The judge stage: ``python -m drdo judge`` (rule ``judge``, workflow/rules/judge.smk).

Reads the scored generations and the eval prompts, judges every selected comparison in both
orders, and writes ``judge/verdicts.parquet`` (one row per prompt and comparison, with the raw
answers) and ``judge_report.csv``. The calls are cached in ``--cache``, outside the outputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import pandas as pd

from .. import io
from ..gguf import model_name as gguf_name
from ..winrates import comparisons
from . import protocol
from .client import CallCache, JudgeClient, JudgeError, Redactor, check_budget, estimate, run_calls
from .prompts import load_template
from .serve import local_server, resolve_gguf

log = logging.getLogger("drdo.judge")


def _api_key(p: dict) -> str | None:
    """The key from the environment variable named by judge.api_key_env (never from the config)."""
    name = p.get("api_key_env")
    if not name or p.get("serve"):
        return None
    key = os.environ.get(name)
    if not key:
        raise JudgeError(f"environment variable {name} is not set (config key judge.api_key_env names it)")
    return key


def run(a) -> None:
    p = dict(a.params)
    if p["comparisons"] == "all":  # the comparisons of winrates.csv
        p["comparisons"] = [list(c) for c in comparisons(p["methods"])]
    started = time.time()
    api_key = _api_key(p)
    redact = Redactor(api_key)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
    for noisy in ("httpx", "httpx2", "httpcore"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)

    scores = pd.concat([io.read_parquet(f) for f in a.scores], ignore_index=True)
    prompts = io.read_parquet(a.prompts)
    templates = {name: load_template(path) for name, path in (t.split("=", 1) for t in a.templates)}
    gguf = resolve_gguf(p["serve"]["gguf"]) if p.get("serve") else None
    # What answers the calls, in every call's cache key: the served file's content, or the endpoint
    # and what it says it serves under the model name (new weights behind an old name are asked anew).
    client, server = None, None
    if gguf:
        model_id = f"{p['model']}@gguf:{io.file_hash(gguf)}"
    else:
        client = JudgeClient(p["base_url"], p["model"], api_key, p["timeout_s"], p["max_retries"], redact)
        server = client.served()
        model_id = f"{p['model']}@{p['base_url']}#{io.config_hash(server)}"
        log.info("judge endpoint %s serves %s", p["base_url"], server["served"])

    items = protocol.plan(scores, prompts, p)
    items, calls = protocol.calls(items, templates, p, model_id)
    cache = CallCache(a.cache)
    if cache.skipped:
        log.warning("%s: skipped %d unreadable line(s) (a job killed mid-write); those calls are made again",
                    cache.path, cache.skipped)
    todo = [c for c in calls if c.key not in cache]
    prices = p["prices"]
    est = estimate(todo, prices)
    log.info("judge %s: %d comparisons x prompts, %d distinct calls, %d cached, %d to make "
             "(estimate: ~%d input tokens, <= %d output tokens, <= $%.4f)", model_id, len(items), len(calls),
             len(calls) - len(todo), len(todo), est["prompt_tokens"], est["completion_tokens"], est["usd"])
    check_budget(est, p.get("max_usd"), p.get("max_requests"), prices)

    made = None
    if todo:
        with local_server(p["serve"]) if gguf else contextlib.nullcontext(p["base_url"]) as base_url:
            if gguf:
                log.info("serving %s (%s) at %s", gguf_name(gguf), gguf.name, base_url)
                client = JudgeClient(base_url, p["model"], api_key, p["timeout_s"], p["max_retries"], redact)
            client.server_id = model_id
            made = run_calls(todo, client, cache, p["max_concurrency"], prices, p.get("max_usd"), p.get("max_requests"))
            if server is not None and (now := client.served()) != server:
                # which answers came from which weights cannot be told: none of this run's is kept
                cache.drop({c.key for c in todo})
                raise JudgeError(f"judge endpoint {p['base_url']} changed what it serves during the run (before: "
                                 f"{server['served']}; after: {now['served']}); this run's {made.calls} answers "
                                 "were discarded, so one report never mixes two servers' verdicts: run the job again")
        log.info("made %d calls: %d prompt tokens, %d completion tokens, $%.4f", made.calls, made.prompt_tokens,
                 made.completion_tokens, made.usd)

    verdicts = protocol.outcomes(items, cache, prices)
    table = protocol.report(verdicts, p.get("gold", False))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        log.info("judge report:\n%s", table.to_string(index=False))
    check_usable(verdicts, table, p, a.cache)
    wall = time.time() - started
    run_info = {"model_id": model_id, "server": server, "calls_needed": len(calls), "calls_cached": len(calls) - len(todo),
                "calls_made": made.calls if made else 0,
                "prompt_tokens_made": made.prompt_tokens if made else 0,
                "completion_tokens_made": made.completion_tokens if made else 0,
                "usd_made": made.usd if made else 0.0, "wall_s": round(wall, 2),
                "unusable_verdicts": int(table["unusable_verdicts"].sum()),
                "gguf": gguf_name(gguf) if gguf else None}
    log.info("judge run: %s", run_info)
    inputs = {**{Path(f).stem: f for f in a.scores}, "prompts": a.prompts,
              **{f"template_{n}": path for n, path in (t.split("=", 1) for t in a.templates)}}
    prov = {**io.provenance("judge", p, inputs), "run": run_info}
    io.write_parquet(verdicts, a.out_verdicts, prov)
    io.write_csv(table, a.out_report, prov)


UNUSABLE_WARNING = 0.5  # share of unusable verdicts above which the job warns


def check_usable(verdicts: pd.DataFrame, table: pd.DataFrame, p: dict, cache: str) -> None:
    """Say it plainly when the judge's answers are mostly unusable, not only in a CSV column.

    Every verdict unusable: an error (no judge win-rate exists; winrates.csv would get judge rows
    with n = 0). More than half unusable, or a comparison without one usable outcome: a WARNING
    with the count, the share and what to try. The answers stay cached either way: a rerun with a
    better parser pays nothing, and a changed judge.response_format asks again.
    """
    asked = verdicts[~verdicts["identical"]]  # identical responses are ties without a verdict
    total = 2 * len(asked)
    unusable = int(asked["verdict_ab"].isna().sum() + asked["verdict_ba"].isna().sum())
    if not total or not unusable:
        return
    if p["response_format"] == "text":
        hint = ("try judge.response_format: json_schema (constrained JSON output; OpenAI, vLLM and llama.cpp "
                "support it), a larger judge.max_tokens if answers are cut short, or a stronger judge.model")
    else:
        hint = ("check that the server honours response_format (json_schema), raise judge.max_tokens if answers "
                "are cut short, or use a stronger judge.model")
    said = f"{unusable} of {total} judge verdicts ({unusable / total:.0%}) are unusable (no 'Preferred: A|B')"
    if cut := int(table["cut_short"].sum()):
        said += f"; {cut} answers were cut short at judge.max_tokens={p['max_tokens']}"
    if unusable == total:
        raw = asked["raw_ab"].iloc[0]
        example = raw[:200] + ("..." if len(raw) > 200 else "")
        raise JudgeError(f"{said}: no judge win-rate can be computed. The first answer was {example!r}; {hint}. "
                         f"The answers are kept in {cache}.")
    empty = int((table["n"] == 0).sum())
    if unusable / total > UNUSABLE_WARNING or empty:
        log.warning("%s; %d of %d comparisons have no usable outcome (their judge rows in winrates.csv have "
                    "n = 0); %s", said, empty, len(table), hint)
