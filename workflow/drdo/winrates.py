"""Head-to-head win-rates from per-prompt scores.

A beats B on prompt x when score(x, y_A) > score(x, y_B) (Table 2's Oracle win-rate; the
gold reward is scored the same way). A tie counts as half a win. Two identical responses are
a tie for every scorer (the Oracle's scores of one text packed into two batches differ in the
last digits). A response too long for the Oracle to score (``too_long`` in the score file)
leaves its prompt out of that scorer's rate, counted in ``n_too_long``; any other missing
score is an error. A response that hit the generation cap (``finished`` false) is counted in
``unfinished_a`` / ``unfinished_b`` and, by ``winrates.unfinished``, scored as it is
(``as_scored``), counted as a loss (``loss``; two unfinished responses tie) or leaves its
prompt out (``drop``, counted in ``n_dropped``). The 95% interval is ``intervals.score_interval`` (prompts are the
random unit).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import io
from .intervals import score_interval

COLUMNS = ["eval_set", "split", "policy_a", "policy_b", "temperature", "scorer", "wins", "ties", "losses", "n",
           "win_rate", "ci_low", "ci_high", "unfinished_a", "unfinished_b", "n_too_long", "n_dropped"]
COUNTS = ["n_too_long", "n_dropped"]  # integers, empty where they do not apply (n_too_long on judge rows)
UNFINISHED = ("as_scored", "loss", "drop")
TIE_TOL = 1e-9  # two different texts whose scores differ by no more than this tie
SCORE_COLUMNS = ("eval_set", "prompt_id", "temperature", "response", "policy", "split", "finished", "too_long")


def comparisons(methods: list[str]) -> list[tuple[str, str]]:
    """Method vs method, each method vs SFT, and the reference vs each method."""
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    return pairs + [(m, "sft") for m in methods] + [("reference", m) for m in methods]


def read_scores(paths: list[str], scorers: list[str]) -> pd.DataFrame:
    """Score files, checked: a missing score is allowed only where the response is too long to
    score (``too_long``); any other is an error naming the file and row."""
    frames = []
    for path in paths:
        df = io.read_parquet(path)
        missing = [c for c in (*SCORE_COLUMNS, *scorers) if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; rebuild it with the current score stage")
        for s in scorers:
            bad = df[s].isna() & ~df["too_long"]
            if bad.any():
                r = df[bad].iloc[0]
                raise ValueError(f"{path}: row {int(np.flatnonzero(bad.to_numpy())[0])} ({r['policy']}, {r['eval_set']}, "
                                 f"prompt {r['prompt_id']}, T={r['temperature']}) has no {s} score but is not too "
                                 f"long to score ({int(bad.sum())} such rows)")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def policy_rows(scores: pd.DataFrame, policy: str, split: str, scorers: list[str]) -> pd.DataFrame:
    """A policy's scores on one split (SFT and the reference are split-independent: ``-``)."""
    shared = policy in ("sft", "reference")
    sel = scores[(scores["policy"] == policy) & (scores["split"] == ("-" if shared else split))]
    cols = ["eval_set", "prompt_id", "response", "finished", "too_long", *scorers]
    return sel[cols] if policy == "reference" else sel[cols + ["temperature"]]


def pair_frame(scores: pd.DataFrame, a: str, b: str, split: str, scorers: list[str]) -> pd.DataFrame:
    """A's and B's rows side by side (suffixes ``_a``, ``_b``) on the prompts (and temperatures)
    both were scored on; the reference is compared with B at every temperature."""
    left, right = policy_rows(scores, a, split, scorers), policy_rows(scores, b, split, scorers)
    key = ["eval_set", "prompt_id"]
    on = key if a == "reference" else key + ["temperature"]
    merged = left.merge(right, on=on, suffixes=("_a", "_b"), validate="one_to_many" if a == "reference" else "one_to_one")
    if merged.empty:
        raise ValueError(f"no common prompts between {a} and {b} on split {split}")
    if len(merged) != len(right) or (a != "reference" and len(merged) != len(left)):
        raise ValueError(f"{a} and {b} on split {split} were scored on different prompts "
                         f"({len(left)} vs {len(right)} rows, {len(merged)} shared)")
    return merged.sort_values(key + ["temperature"], ignore_index=True)  # results must not depend on file order


def outcomes(pairs: pd.DataFrame, scorer: str, unfinished: str = "as_scored") -> np.ndarray:
    """Per-prompt outcome for A in ``pair_frame`` rows: 1 win, 0.5 tie, 0 loss; NaN where the
    prompt is left out (a response too long to score, or unfinished under ``drop``)."""
    if unfinished not in UNFINISHED:
        raise ValueError(f"config key winrates.unfinished must be one of {UNFINISHED}, got {unfinished!r}")
    diff = pairs[f"{scorer}_a"].to_numpy(dtype=float) - pairs[f"{scorer}_b"].to_numpy(dtype=float)
    out = np.where(np.abs(diff) <= TIE_TOL, 0.5, np.where(diff > 0, 1.0, 0.0))
    out[np.isnan(diff)] = np.nan  # too long to score (read_scores allows no other missing score)
    unf_a, unf_b = ~pairs["finished_a"].to_numpy(dtype=bool), ~pairs["finished_b"].to_numpy(dtype=bool)
    if unfinished == "loss":
        out = np.where(unf_a & unf_b, 0.5, np.where(unf_a, 0.0, np.where(unf_b, 1.0, out)))
    out[(pairs["response_a"] == pairs["response_b"]).to_numpy()] = 0.5  # identical text: a tie, whatever the scores
    if unfinished == "drop":
        out[unf_a | unf_b] = np.nan
    return out


def outcome_stats(outcome: np.ndarray) -> dict:
    """Counts, win-rate and score interval of per-prompt outcomes for A (1, 0.5 or 0; NaN left out)."""
    outcome = outcome[~np.isnan(outcome)]
    n = len(outcome)
    if n == 0:  # e.g. a judge without a single usable verdict: no rate rather than an invented one
        return {"wins": 0, "ties": 0, "losses": 0, "n": 0, "win_rate": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    lo, hi = score_interval(outcome)
    return {"wins": int((outcome == 1).sum()), "ties": int((outcome == 0.5).sum()),
            "losses": int((outcome == 0).sum()), "n": n, "win_rate": outcome.mean(),
            "ci_low": float(lo), "ci_high": float(hi)}


def winrate_table(scores: pd.DataFrame, splits: list[str], methods: list[str], scorers: list[str],
                  unfinished: str = "as_scored") -> pd.DataFrame:
    """``scores``: one row per (policy, split, eval_set, prompt_id, temperature) with a column
    per scorer and ``response``, ``finished``, ``too_long``; ``sft`` and ``reference`` rows have
    split ``"-"``, ``reference`` rows have temperature NaN (compared at every temperature)."""
    rows = []
    for split in splits:
        for a, b in comparisons(methods):
            merged = pair_frame(scores, a, b, split, scorers)
            for scorer in scorers:
                merged[f"outcome_{scorer}"] = outcomes(merged, scorer, unfinished)
            for (eval_set, temp), g in merged.groupby(["eval_set", "temperature"], sort=True):
                shares = {"unfinished_a": float((~g["finished_a"].astype(bool)).mean()),
                          "unfinished_b": float((~g["finished_b"].astype(bool)).mean())}
                dropped = (~g["finished_a"].astype(bool) | ~g["finished_b"].astype(bool)) if unfinished == "drop" else False
                for scorer in scorers:
                    no_score = g[f"{scorer}_a"].isna() | g[f"{scorer}_b"].isna()
                    too_long = int((no_score & g[f"outcome_{scorer}"].isna() & ~dropped).sum())
                    rows.append({"eval_set": eval_set, "split": split, "policy_a": a, "policy_b": b,
                                 "temperature": temp, "scorer": scorer, **outcome_stats(g[f"outcome_{scorer}"].to_numpy()),
                                 **shares, "n_too_long": too_long, "n_dropped": int(np.sum(dropped))})
    return _typed(pd.DataFrame(rows, columns=COLUMNS))


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    return table.astype({c: "Int64" for c in COUNTS})


def judge_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """``scorer: judge`` rows from the judge's per-prompt outcomes (``judge/verdicts.parquet``);
    prompts without a usable verdict in both orders are not in the denominator but in
    ``n_dropped``. ``unfinished_a``, ``unfinished_b`` and ``n_too_long`` are empty: the score rows
    of the same comparison hold them."""
    rows = []
    key = ["eval_set", "split", "policy_a", "policy_b", "temperature"]
    for k, g in verdicts.groupby(key, sort=False):
        outcome = g["outcome"].to_numpy(dtype=float)
        rows.append({**dict(zip(key, k)), "scorer": "judge", **outcome_stats(outcome),
                     "n_dropped": int(np.isnan(outcome).sum())})
    return _typed(pd.DataFrame(rows, columns=COLUMNS))
