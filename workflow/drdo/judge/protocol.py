"""What is judged, and how two orders become one outcome.

Each selected comparison (A, B) on each sampled prompt is judged twice, A shown first and B
shown first. Both orders prefer the same response: a win (1) or a loss (0) for A; they disagree
(the verdict followed the position, not the text): a tie (0.5); either order without a usable
verdict: the prompt is dropped from the denominator and counted. Two identical responses are a tie
without a call, as for every other scorer: a verdict on them could only follow the position, so it
would count as a position flip and spend two answers on nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .client import Call, CallCache, call_key, cost_usd
from .prompts import document_kind, parse_verdict, render, response_format

KEY = ["eval_set", "split", "policy_a", "policy_b", "temperature"]
SHARED = ("sft", "reference")  # policies that do not depend on the preference split


def sample_prompts(prompts: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` prompts per eval set (all when it has fewer), the same for every comparison."""
    parts = []
    for eval_set, g in prompts.groupby("eval_set", sort=True):
        g = g.sort_values("prompt_id")
        if n < len(g):
            g = g.iloc[np.sort(np.random.default_rng(seed).choice(len(g), size=n, replace=False))]
        parts.append(g)
    return pd.concat(parts, ignore_index=True)[["eval_set", "prompt_id", "prompt", "document", "reference"]]


def _side(scores: pd.DataFrame, policy: str, split: str, temperatures: list[float]) -> pd.DataFrame:
    rows = scores[(scores["policy"] == policy) & (scores["split"] == ("-" if policy in SHARED else split))]
    if "gold" not in rows:  # real data has no gold reward (score files without the column)
        rows = rows.assign(gold=np.nan)
    cols = ["eval_set", "prompt_id", "response", "gold", "oracle"]
    if policy == "reference":  # one per prompt, compared with the policy at every temperature
        return rows[cols].merge(pd.DataFrame({"temperature": temperatures}), how="cross")
    return rows[rows["temperature"].isin(temperatures)][cols + ["temperature"]]


def plan(scores: pd.DataFrame, prompts: pd.DataFrame, p: dict) -> pd.DataFrame:
    """One row per (split, comparison, temperature, eval set, sampled prompt) with both responses."""
    if p.get("eval_sets"):  # e.g. only AlpacaEval (the paper's Table 3)
        unknown = sorted(set(p["eval_sets"]) - set(prompts["eval_set"]))
        if unknown:
            raise ValueError(f"config key judge.eval_sets: {unknown} not among the eval sets "
                             f"{sorted(set(prompts['eval_set']))}")
        prompts = prompts[prompts["eval_set"].isin(p["eval_sets"])]
    sample = sample_prompts(prompts, p["n_prompts"], p["seed"])
    temps = [float(t) for t in p["temperatures"]]
    base = sample.merge(pd.DataFrame({"temperature": temps}), how="cross")
    parts = []
    on = ["eval_set", "prompt_id", "temperature"]
    for split in p["splits"]:
        for a, b in p["comparisons"]:
            items = base
            for side, policy in (("a", a), ("b", b)):
                s = _side(scores, policy, split, temps).rename(
                    columns={"response": f"response_{side}", "gold": f"gold_{side}", "oracle": f"oracle_{side}"})
                items = items.merge(s, on=on, how="left", validate="one_to_one")
                missing = items[f"response_{side}"].isna()
                if missing.any():
                    r = items[missing].iloc[0]
                    raise ValueError(f"judge: no response of {policy} (split {split}) for {r.eval_set} prompt "
                                     f"{r.prompt_id} at T={r.temperature}; judge.temperatures must be among "
                                     "generate.temperatures")
            parts.append(items.assign(split=split, policy_a=a, policy_b=b))
    items = pd.concat(parts, ignore_index=True)
    return items[KEY + [c for c in items.columns if c not in KEY]]


def calls(items: pd.DataFrame, templates: dict[str, str], p: dict, model_id: str) -> tuple[pd.DataFrame, list[Call]]:
    """Render both orders of every item; returns items with ``key_ab``/``key_ba`` (None for two
    identical responses: nothing to ask) and the unique calls."""
    sampling = {"temperature": p["temperature"], "max_tokens": p["max_tokens"],
                "response_format": response_format(p["response_format"])}
    unique: dict[str, Call] = {}
    keys = {"ab": [], "ba": []}
    for r in items.itertuples(index=False):
        if r.response_a == r.response_b:
            keys["ab"].append(None)
            keys["ba"].append(None)
            continue
        if r.eval_set in p.get("instruction_sets", []):
            template = templates["instruction"]
        elif "reference" in (r.policy_a, r.policy_b):
            template = templates["vs_reference"]
        else:
            template = templates["pairwise"]
        kind = document_kind(r.eval_set)
        values = {"document": r.document, "prompt": r.prompt, "reference": r.reference,
                  "document_kind": kind, "Document_kind": kind[:1].upper() + kind[1:]}
        for order, (first, second) in (("ab", (r.response_a, r.response_b)), ("ba", (r.response_b, r.response_a))):
            messages = [{"role": "user", "content": render(template, {**values, "response_a": first,
                                                                       "response_b": second})}]
            key = call_key(model_id, messages, sampling)
            unique.setdefault(key, Call(key, messages, sampling))
            keys[order].append(key)
    return items.assign(key_ab=keys["ab"], key_ba=keys["ba"]), list(unique.values())


def outcomes(items: pd.DataFrame, cache: CallCache, prices: dict) -> pd.DataFrame:
    """Per item: raw answers, verdicts, why each answer ended (``finish_reason``; ``length``: cut
    short at judge.max_tokens), the outcome for A (1 / 0.5 / 0, NaN when dropped), tokens, cost.
    Identical responses (``identical``) have no answer and the outcome 0.5."""
    out = items.drop(columns=["prompt", "document", "reference"])
    out["identical"] = out["key_ab"].isna()
    empty = {"content": None, "finish_reason": None, "prompt_tokens": 0, "completion_tokens": 0}
    cols = {}
    for order in ("ab", "ba"):
        recs = [empty if same else cache.get(k) for k, same in zip(out[f"key_{order}"], out["identical"])]
        if any(r is None for r in recs):
            raise RuntimeError("judge: an answer is missing from the cache after the calls")  # a bug, never data
        cols[f"raw_{order}"] = [r["content"] for r in recs]
        cols[f"verdict_{order}"] = [None if r["content"] is None else parse_verdict(r["content"]) for r in recs]
        cols[f"finish_reason_{order}"] = [r.get("finish_reason") for r in recs]
        cols[f"prompt_tokens_{order}"] = [r["prompt_tokens"] for r in recs]
        cols[f"completion_tokens_{order}"] = [r["completion_tokens"] for r in recs]
    out = out.assign(**cols)
    a_first = out["verdict_ab"].map({"A": 1.0, "B": 0.0})   # A shown first: "A" is policy A
    b_first = out["verdict_ba"].map({"A": 0.0, "B": 1.0})   # B shown first: "A" is policy B
    out["outcome"] = (a_first + b_first) / 2                # NaN when either order has no verdict
    out.loc[out["identical"], "outcome"] = 0.5
    out["prompt_tokens"] = out["prompt_tokens_ab"] + out["prompt_tokens_ba"]
    out["completion_tokens"] = out["completion_tokens_ab"] + out["completion_tokens_ba"]
    out["cost_usd"] = cost_usd(out["prompt_tokens"], out["completion_tokens"], prices)
    return out


def _agreement(g: pd.DataFrame, scorer: str) -> tuple[float, int]:
    """How often a decisive judge outcome picks the response the scorer ranks higher."""
    a, b = g[f"{scorer}_a"], g[f"{scorer}_b"]
    sel = g["outcome"].isin([0.0, 1.0]) & (np.abs(a - b) > 1e-9)
    n = int(sel.sum())
    agree = ((g.loc[sel, "outcome"] == 1.0) == (a[sel] > b[sel])).mean() if n else np.nan
    return float(agree), n


def report(verdicts: pd.DataFrame, with_gold: bool) -> pd.DataFrame:
    """Per comparison: counts, position statistics (on the pairs asked: identical responses are
    not), lengths, tokens, cost, agreement with the scorers."""
    rows = []
    for key, g in verdicts.groupby(KEY, sort=False):
        used = g["outcome"].dropna()
        n = len(used)
        asked = g[~g["identical"]]
        decided = asked["outcome"].dropna()
        single = pd.concat([asked["verdict_ab"], asked["verdict_ba"]]).dropna()
        ends = pd.concat([asked["finish_reason_ab"], asked["finish_reason_ba"]])
        gold_agree, gold_n = _agreement(g, "gold") if with_gold else (np.nan, 0)
        oracle_agree, oracle_n = _agreement(g, "oracle")
        rows.append({
            **dict(zip(KEY, key)), "n": n, "wins": int((used == 1).sum()), "ties": int((used == 0.5).sum()),
            "losses": int((used == 0).sum()), "dropped": int(g["outcome"].isna().sum()),
            "win_rate": used.mean() if n else np.nan,
            "identical": int(g["identical"].sum()),
            "position_flip_rate": (decided == 0.5).mean() if len(decided) else np.nan,
            "first_position_win_rate": (single == "A").mean() if len(single) else np.nan,
            "unusable_verdicts": int(asked["verdict_ab"].isna().sum() + asked["verdict_ba"].isna().sum()),
            "cut_short": int((ends == "length").sum()),
            "mean_words_a": g["response_a"].str.split().str.len().mean(),
            "mean_words_b": g["response_b"].str.split().str.len().mean(),
            "calls": 2 * len(asked), "prompt_tokens": int(g["prompt_tokens"].sum()),
            "completion_tokens": int(g["completion_tokens"].sum()), "cost_usd": g["cost_usd"].sum(),
            "gold_agreement": gold_agree, "gold_agreement_n": gold_n,
            "oracle_agreement": oracle_agree, "oracle_agreement_n": oracle_n,
        })
    return pd.DataFrame(rows)
