"""Edit distance between paired responses, length filtering, and the paper's preference splits.

The DRDO paper splits the comparisons by annotator confidence and by how different the two
summaries are (normalised edit distance): ``hc_he`` (high confidence, high edit distance),
``lc_le`` (low confidence, low edit distance) and ``all`` (Table 5). Thresholds come from the
TRAIN rows only, so validation membership never depends on validation data.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from rapidfuzz.distance import Levenshtein


SPLIT_NAMES = ("all", "hc_he", "lc_le")
TABLE5_COLUMNS = ["split", "mean_confidence", "mean_edit_distance", "n_train", "n_validation"]


def normalized_edit_distance(a_tokens, b_tokens) -> float:
    """Levenshtein distance / max(len(a), len(b)); 0.0 if both are empty.

    Works on strings (characters) and on lists of hashables (e.g. token ids).
    """
    longest = max(len(a_tokens), len(b_tokens))
    return Levenshtein.distance(a_tokens, b_tokens) / longest if longest else 0.0


def pair_edit_distances(df: pd.DataFrame, tokenize: Callable[[str], list] | None = None,
                        level: str = "token") -> np.ndarray:
    """Normalised edit distance between ``chosen`` and ``rejected`` of every row (float64).

    ``level="token"`` compares ``tokenize(text)`` sequences (required then), ``"char"`` the strings.
    """
    if level == "token":
        if tokenize is None:
            raise ValueError("level='token' needs a tokenize callable")
        pairs = ((tokenize(c), tokenize(r)) for c, r in zip(df["chosen"], df["rejected"]))
    elif level == "char":
        pairs = zip(df["chosen"], df["rejected"])
    else:
        raise ValueError(f"level must be 'token' or 'char', got {level!r}")
    return np.fromiter((normalized_edit_distance(a, b) for a, b in pairs), dtype=np.float64,
                       count=len(df))


def filter_length(df: pd.DataFrame, length: Callable[[str, str, str | None], int], max_length: int
                  ) -> tuple[pd.DataFrame, int]:
    """Drop pairs whose prompt + either response is longer than ``max_length`` tokens.

    ``length(prompt, response, document)`` must count exactly the tokens training sees
    (``batching.encode``: BOS, prompt as cut to its budget, response, EOS); the paper keeps
    pairs of at most 1,024 such tokens. Returns (kept rows with a fresh index, number dropped).
    """
    docs = df["document"] if "document" in df else [None] * len(df)
    keep = np.array([length(p, c, d) <= max_length and length(p, r, d) <= max_length
                     for p, c, r, d in zip(df["prompt"], df["chosen"], df["rejected"], docs)], dtype=bool)
    return df[keep].reset_index(drop=True), int((~keep).sum())


def cap_validation(splits: dict[str, pd.DataFrame], max_validation: int, seed: int
                   ) -> dict[str, pd.DataFrame]:
    """At most ``max_validation`` validation pairs per split, a seeded sample (the paper's
    Table 5 validates on about 1.1k pairs per split, not on TL;DR's 86k). Train rows and
    the row order are kept; each split is sampled on its own."""
    out = {}
    for name, part in splits.items():
        val = part.index[part["split"] == "validation"]
        if len(val) > max_validation:
            rng = np.random.default_rng([seed, SPLIT_NAMES.index(name) if name in SPLIT_NAMES else 99])
            drop = np.setdiff1d(val, rng.choice(val, size=max_validation, replace=False))
            part = part.drop(index=drop).reset_index(drop=True)
        out[name] = part
    return out


def assign_splits(df: pd.DataFrame, quantile: float = 0.5
                  ) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """Split pairs by confidence and edit distance; returns ``(splits, thresholds)``.

    ``df`` needs ``confidence``, ``edit_distance`` and ``split`` ("train"/"validation").
    ``thresholds = {"quantile", "confidence", "edit_distance"}``: the ``quantile`` of each
    over train rows (linear interpolation), applied to train and validation alike.
    ``splits = {"all": df, "hc_he": conf >= t_conf & dist >= t_dist,
    "lc_le": conf < t_conf & dist < t_dist}`` (ties at a threshold go to ``hc_he``).
    Raises ``ValueError`` if there are no train rows or a split comes out empty.
    """
    missing = {"confidence", "edit_distance", "split"} - set(df.columns)
    if missing:
        raise ValueError(f"assign_splits: missing columns {sorted(missing)}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    unknown = set(df["split"]) - {"train", "validation"}
    if unknown:
        raise ValueError(f"assign_splits: unknown split values {sorted(unknown)}")
    train = df[df["split"] == "train"]
    if train.empty:
        raise ValueError("assign_splits: no train rows to compute thresholds on")
    t_conf = float(train["confidence"].quantile(quantile))
    t_dist = float(train["edit_distance"].quantile(quantile))
    thresholds = {"quantile": quantile, "confidence": t_conf, "edit_distance": t_dist}
    high = (df["confidence"] >= t_conf) & (df["edit_distance"] >= t_dist)
    low = (df["confidence"] < t_conf) & (df["edit_distance"] < t_dist)
    splits = {"all": df.reset_index(drop=True),
              "hc_he": df[high].reset_index(drop=True),
              "lc_le": df[low].reset_index(drop=True)}
    for name, part in splits.items():
        if part.empty:
            raise ValueError(f"split {name!r} is empty with thresholds {thresholds}")
    return splits, thresholds


def table5(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The paper's Table 5: one row per split, in the dict's order.

    ``mean_confidence`` and ``mean_edit_distance`` are over the split's train AND validation
    rows together; ``n_train`` / ``n_validation`` count each side.
    """
    rows = []
    for name, part in splits.items():
        if part.empty:
            raise ValueError(f"split {name!r} is empty")
        rows.append({"split": name,
                     "mean_confidence": float(part["confidence"].mean()),
                     "mean_edit_distance": float(part["edit_distance"].mean()),
                     "n_train": int((part["split"] == "train").sum()),
                     "n_validation": int((part["split"] == "validation").sum())})
    return pd.DataFrame(rows, columns=TABLE5_COLUMNS)
