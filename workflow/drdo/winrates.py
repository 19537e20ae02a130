"""Head-to-head win-rates from per-prompt scores.

A beats B on prompt x when score(x, y_A) > score(x, y_B) (Table 2's Oracle win-rate; the
gold reward is scored the same way). A tie counts as half a win. The 95% interval is a
percentile bootstrap over prompts (the prompts are the random unit), seeded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["eval_set", "split", "policy_a", "policy_b", "temperature", "scorer",
           "wins", "ties", "losses", "n", "win_rate", "ci_low", "ci_high"]


def comparisons(methods: list[str]) -> list[tuple[str, str]]:
    """Method vs method, each method vs SFT, and the reference vs each method."""
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    return pairs + [(m, "sft") for m in methods] + [("reference", m) for m in methods]


def head_to_head(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int, tie_tol: float = 1e-9) -> dict:
    """Prompts where either side has no score (NaN: too long to score) are left out of n."""
    diff = a - b
    return outcome_stats(outcomes(diff[~np.isnan(diff)], tie_tol), n_boot, seed)


def outcomes(diff: np.ndarray, tie_tol: float = 1e-9) -> np.ndarray:
    """Per-prompt outcome for A from score differences A - B: 1 win, 0.5 tie, 0 loss; NaN where
    either side has no score (too long to score), so callers can leave the prompt out."""
    return np.where(np.isnan(diff), np.nan, np.where(np.abs(diff) <= tie_tol, 0.5, (diff > 0).astype(float)))


def outcome_stats(outcome: np.ndarray, n_boot: int, seed: int) -> dict:
    """Counts, win-rate and bootstrap interval of per-prompt outcomes for A (1, 0.5 or 0)."""
    n = len(outcome)
    if n == 0:  # e.g. a judge without a single usable verdict: no rate rather than an invented one
        return {"wins": 0, "ties": 0, "losses": 0, "n": 0, "win_rate": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    rng = np.random.default_rng(seed)
    boots = outcome[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    return {"wins": int((outcome == 1).sum()), "ties": int((outcome == 0.5).sum()),
            "losses": int((outcome == 0).sum()), "n": n, "win_rate": outcome.mean(),
            "ci_low": np.quantile(boots, 0.025), "ci_high": np.quantile(boots, 0.975)}


def winrate_table(scores: pd.DataFrame, splits: list[str], methods: list[str], scorers: list[str],
                  n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """``scores``: one row per (policy, split, eval_set, prompt_id, temperature) with a column
    per scorer; ``sft`` and ``reference`` rows have split ``"-"``, ``reference`` rows have
    temperature NaN (it is compared with the policy at every temperature)."""
    rows = []
    key = ["eval_set", "prompt_id"]
    for split in splits:
        for a, b in comparisons(methods):
            left, right = policy_rows(scores, a, split, scorers), policy_rows(scores, b, split, scorers)
            on = key if a == "reference" else key + ["temperature"]
            merged = left.merge(right, on=on, suffixes=("_a", "_b"),
                                validate="one_to_many" if a == "reference" else "one_to_one")
            if merged.empty:
                raise ValueError(f"no common prompts between {a} and {b} on split {split}")
            if len(merged) != len(right) or (a != "reference" and len(merged) != len(left)):
                raise ValueError(f"{a} and {b} on split {split} were scored on different prompts "
                                 f"({len(left)} vs {len(right)} rows, {len(merged)} shared)")
            merged = merged.sort_values(key)  # the bootstrap must not depend on file order
            for (eval_set, temp), g in merged.groupby(["eval_set", "temperature"], sort=True):
                for scorer in scorers:
                    stats = head_to_head(g[f"{scorer}_a"].to_numpy(), g[f"{scorer}_b"].to_numpy(), n_boot, seed)
                    rows.append({"eval_set": eval_set, "split": split, "policy_a": a, "policy_b": b,
                                 "temperature": temp, "scorer": scorer, **stats})
    return pd.DataFrame(rows, columns=COLUMNS)


def policy_rows(scores: pd.DataFrame, policy: str, split: str, scorers: list[str]) -> pd.DataFrame:
    """A policy's scores on one split (SFT and the reference are split-independent: ``-``)."""
    shared = policy in ("sft", "reference")
    sel = scores[(scores["policy"] == policy) & (scores["split"] == ("-" if shared else split))]
    cols = ["eval_set", "prompt_id", *scorers]
    return sel[cols] if policy == "reference" else sel[cols + ["temperature"]]


def judge_table(verdicts: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """``scorer: judge`` rows from the judge's per-prompt outcomes (``judge/verdicts.parquet``);
    prompts without a usable verdict in both orders are not in the denominator."""
    rows = []
    key = ["eval_set", "split", "policy_a", "policy_b", "temperature"]
    for k, g in verdicts.groupby(key, sort=False):
        g = g.sort_values("prompt_id")  # the bootstrap must not depend on file order
        stats = outcome_stats(g["outcome"].dropna().to_numpy(dtype=float), n_boot, seed)
        rows.append({**dict(zip(key, k)), "scorer": "judge", **stats})
    return pd.DataFrame(rows, columns=COLUMNS)
