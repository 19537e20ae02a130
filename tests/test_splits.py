"""Edit distances, length filter and the hc_he / lc_le / all splits on hand-checked tables."""

import numpy as np
import pandas as pd
import pytest

from drdo.data.splits import (assign_splits, filter_length, normalized_edit_distance,
                              pair_edit_distances, table5)


def ws_tokens(s):
    return s.split()


# ---------------------------------------------------------------------------- edit distance

@pytest.mark.parametrize("a, b, expected", [
    ([1, 2, 3], [1, 3], 1 / 3),
    ("kitten", "sitting", 3 / 7),
    ([], [], 0.0),
    ([], [5, 6], 1.0),
    ([4, 5], [4, 5], 0.0),
])
def test_normalized_edit_distance(a, b, expected):
    assert normalized_edit_distance(a, b) == pytest.approx(expected)


def test_pair_edit_distances_levels():
    df = pd.DataFrame({"chosen": ["a b c", "kitten"], "rejected": ["a c", "sitting"]})
    tok = pair_edit_distances(df, ws_tokens, level="token")
    np.testing.assert_allclose(tok, [1 / 3, 1.0])  # one-word strings differ as whole tokens
    chars = pair_edit_distances(df, None, level="char")
    np.testing.assert_allclose(chars, [2 / 5, 3 / 7])  # "a b c" -> "a c": delete "b "
    with pytest.raises(ValueError):
        pair_edit_distances(df, None, level="token")


def test_filter_length_counts():
    # Whitespace tokens: "p q\nTL;DR:" is 3, each response adds its words.
    df = pd.DataFrame({"prompt": ["p q\nTL;DR:"] * 3,
                       "chosen": ["a b", "a", "a b c d"],
                       "rejected": ["a", "a b c", "a"]})
    kept, n = filter_length(df, lambda p, r, d: len(p.split()) + len(r.split()), max_length=5)
    assert n == 2  # rows 1 (rejected 3 + 3 = 6) and 2 (chosen 3 + 4 = 7) are too long
    assert kept["chosen"].tolist() == ["a b"]  # row 0 is exactly 5: kept
    assert kept.index.tolist() == [0]


# ---------------------------------------------------------------------------- splits

# Train medians: confidence 5, edit distance 0.3 (both hit exactly by t2: a tie).
TABLE = pd.DataFrame([
    ("t1", "train", 2, 0.10),       # lc_le
    ("t2", "train", 5, 0.30),       # hc_he (ties on both thresholds)
    ("t3", "train", 5, 0.50),       # hc_he
    ("t4", "train", 8, 0.20),       # neither
    ("t5", "train", 9, 0.90),       # hc_he
    ("v1", "validation", 9, 0.95),  # hc_he
    ("v2", "validation", 1, 0.05),  # lc_le
    ("v3", "validation", 4, 0.25),  # lc_le
    ("v4", "validation", 5, 0.29),  # neither; hc_he by validation-only medians (4.5, 0.27)
], columns=["pair_id", "split", "confidence", "edit_distance"])


def test_assign_splits_membership_and_thresholds():
    splits, th = assign_splits(TABLE)
    assert th == {"quantile": 0.5, "confidence": 5.0, "edit_distance": pytest.approx(0.3)}
    assert splits["all"]["pair_id"].tolist() == TABLE["pair_id"].tolist()
    assert splits["hc_he"]["pair_id"].tolist() == ["t2", "t3", "t5", "v1"]
    assert splits["lc_le"]["pair_id"].tolist() == ["t1", "v2", "v3"]


def test_validation_uses_train_thresholds():
    # Medians of the validation rows alone would put v4 into hc_he.
    val = TABLE[TABLE["split"] == "validation"]
    assert val["confidence"].median() == 4.5 and val["edit_distance"].median() == pytest.approx(0.27)
    splits, _ = assign_splits(TABLE)
    assert "v4" not in set(splits["hc_he"]["pair_id"]) | set(splits["lc_le"]["pair_id"])
    # Changing validation values never moves a threshold.
    shifted = TABLE.copy()
    shifted.loc[shifted["split"] == "validation", "confidence"] = 9
    shifted.loc[shifted["split"] == "validation", "edit_distance"] = 0.99
    _, th = assign_splits(shifted)
    assert (th["confidence"], th["edit_distance"]) == (5.0, pytest.approx(0.3))


def test_table5_hand_checked():
    splits, _ = assign_splits(TABLE)
    t = table5(splits).set_index("split")
    assert list(t.index) == ["all", "hc_he", "lc_le"]
    assert t.loc["all", "mean_confidence"] == pytest.approx(48 / 9)
    assert t.loc["all", "mean_edit_distance"] == pytest.approx(3.54 / 9)
    assert t.loc["hc_he", "mean_confidence"] == pytest.approx(7.0)
    assert t.loc["hc_he", "mean_edit_distance"] == pytest.approx(2.65 / 4)
    assert t.loc["lc_le", "mean_confidence"] == pytest.approx(7 / 3)
    assert t.loc["lc_le", "mean_edit_distance"] == pytest.approx(0.4 / 3)
    assert t[["n_train", "n_validation"]].values.tolist() == [[5, 4], [3, 1], [1, 2]]


def test_empty_split_is_an_error():
    flat = TABLE.assign(confidence=5, edit_distance=0.3)  # nothing is below the medians
    with pytest.raises(ValueError, match=r"'lc_le'.*'confidence': 5\.0"):
        assign_splits(flat)


def test_no_train_rows_is_an_error():
    with pytest.raises(ValueError, match="no train rows"):
        assign_splits(TABLE[TABLE["split"] == "validation"])
