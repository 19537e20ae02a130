"""Head-to-head win-rates: hand-computed counts, the bootstrap interval, the comparison table."""

import math

import numpy as np
import pandas as pd
import pytest

from drdo.winrates import COLUMNS, comparisons, head_to_head, winrate_table


def test_head_to_head_hand_computed():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 2.0, 5.0, 1.0])
    # diffs 1, 0, -2, 3: win, tie, loss, win -> (2 + 0.5) / 4
    r = head_to_head(a, b, n_boot=2000, seed=0)
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (2, 1, 1, 4)
    assert r["win_rate"] == pytest.approx(0.625)
    assert 0.0 <= r["ci_low"] <= r["win_rate"] <= r["ci_high"] <= 1.0
    assert r["ci_low"] < r["ci_high"]
    again = head_to_head(a, b, n_boot=2000, seed=0)
    assert (again["ci_low"], again["ci_high"]) == (r["ci_low"], r["ci_high"])
    # swapping the sides mirrors everything
    s = head_to_head(b, a, n_boot=2000, seed=0)
    assert (s["wins"], s["ties"], s["losses"]) == (1, 1, 2)
    assert s["win_rate"] == pytest.approx(0.375)
    assert s["ci_low"] == pytest.approx(1 - r["ci_high"]) and s["ci_high"] == pytest.approx(1 - r["ci_low"])


def test_head_to_head_tie_tolerance_and_extremes():
    r = head_to_head(np.array([1.0 + 1e-12, 2.0]), np.array([1.0, 2.0]), n_boot=100, seed=1)
    assert (r["wins"], r["ties"], r["losses"], r["win_rate"]) == (0, 2, 0, 0.5)
    r = head_to_head(np.array([3.0, 4.0, 5.0]), np.array([0.0, 0.0, 0.0]), n_boot=100, seed=1)
    assert (r["win_rate"], r["ci_low"], r["ci_high"]) == (1.0, 1.0, 1.0)


def test_comparisons_order():
    assert comparisons(["drdo", "dpo"]) == [("drdo", "dpo"), ("drdo", "sft"), ("dpo", "sft"),
                                            ("reference", "drdo"), ("reference", "dpo")]


# per temperature: oracle score of prompts p0, p1, p2
SCORES = {
    "drdo": {0.25: [1.0, 1.0, 3.0], 1.0: [1.0, 0.0, -1.0]},
    "dpo": {0.25: [0.0, 2.0, 3.0], 1.0: [2.0, -1.0, -2.0]},
    "sft": {0.25: [0.0, 1.0, 2.0], 1.0: [0.0, 0.0, 0.0]},
}
REFERENCE = [0.5, 1.0, 2.0]
PROMPTS = ["p0", "p1", "p2"]

# (policy_a, policy_b, temperature) -> (wins, ties, losses), worked out by hand from SCORES
EXPECTED = [
    ("drdo", "dpo", 0.25, (1, 1, 1)),       # 1>0, 1<2, 3=3
    ("drdo", "dpo", 1.0, (2, 0, 1)),        # 1<2, 0>-1, -1>-2
    ("drdo", "sft", 0.25, (2, 1, 0)),       # 1>0, 1=1, 3>2
    ("drdo", "sft", 1.0, (1, 1, 1)),        # 1>0, 0=0, -1<0
    ("dpo", "sft", 0.25, (2, 1, 0)),        # 0=0, 2>1, 3>2
    ("dpo", "sft", 1.0, (1, 0, 2)),         # 2>0, -1<0, -2<0
    ("reference", "drdo", 0.25, (0, 1, 2)),  # .5<1, 1=1, 2<3
    ("reference", "drdo", 1.0, (2, 0, 1)),   # .5<1, 1>0, 2>-1
    ("reference", "dpo", 0.25, (1, 0, 2)),   # .5>0, 1<2, 2<3
    ("reference", "dpo", 1.0, (2, 0, 1)),    # .5<2, 1>-1, 2>-2
]


def _scores_frame(seed=0):
    rows = []
    for policy, by_temp in SCORES.items():
        split = "-" if policy == "sft" else "all"
        for temp, vals in by_temp.items():
            for pid, v in zip(PROMPTS, vals):
                rows.append({"policy": policy, "split": split, "eval_set": "tldr", "prompt_id": pid,
                             "temperature": temp, "oracle": v, "gold": -v})
                if policy != "sft":  # another split's policies must not leak in
                    rows.append({"policy": policy, "split": "other", "eval_set": "tldr", "prompt_id": pid,
                                 "temperature": temp, "oracle": 100.0, "gold": 100.0})
    for pid, v in zip(PROMPTS, REFERENCE):
        rows.append({"policy": "reference", "split": "-", "eval_set": "tldr", "prompt_id": pid,
                     "temperature": float("nan"), "oracle": v, "gold": -v})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_winrate_table_rows_and_counts():
    table = winrate_table(_scores_frame(), ["all"], ["drdo", "dpo"], ["oracle"], n_boot=500, seed=0)
    assert list(table.columns) == COLUMNS
    assert len(table) == len(EXPECTED)
    for (_, row), (a, b, temp, (w, t, l)) in zip(table.iterrows(), EXPECTED):
        assert (row["eval_set"], row["split"], row["policy_a"], row["policy_b"], row["scorer"]) == \
            ("tldr", "all", a, b, "oracle")
        assert row["temperature"] == temp
        assert (row["wins"], row["ties"], row["losses"], row["n"]) == (w, t, l, 3), (a, b, temp)
        assert row["win_rate"] == pytest.approx((w + 0.5 * t) / 3)
        assert 0.0 <= row["ci_low"] <= row["ci_high"] <= 1.0
    assert not table["temperature"].isna().any()
    # deterministic: the same frame gives the same table, CIs included
    again = winrate_table(_scores_frame(), ["all"], ["drdo", "dpo"], ["oracle"], n_boot=500, seed=0)
    pd.testing.assert_frame_equal(again, table)
    # the counts (not the bootstrap) are independent of the row order of the scores frame
    shuffled = winrate_table(_scores_frame(seed=7), ["all"], ["drdo", "dpo"], ["oracle"], n_boot=500, seed=0)
    cols = ["policy_a", "policy_b", "temperature", "wins", "ties", "losses", "n", "win_rate"]
    pd.testing.assert_frame_equal(shuffled[cols], table[cols])


def test_winrate_ci_independent_of_scores_row_order():
    table = winrate_table(_scores_frame(), ["all"], ["drdo", "dpo"], ["oracle"], n_boot=500, seed=0)
    shuffled = winrate_table(_scores_frame(seed=7), ["all"], ["drdo", "dpo"], ["oracle"], n_boot=500, seed=0)
    pd.testing.assert_frame_equal(shuffled, table)


def test_winrate_table_several_scorers():
    table = winrate_table(_scores_frame(), ["all"], ["drdo", "dpo"], ["oracle", "gold"], n_boot=100, seed=0)
    assert len(table) == 2 * len(EXPECTED)
    assert table["scorer"].tolist() == ["oracle", "gold"] * len(EXPECTED)
    oracle, gold = table[table["scorer"] == "oracle"], table[table["scorer"] == "gold"]
    # gold = -oracle, so wins and losses swap
    assert gold["wins"].tolist() == oracle["losses"].tolist()
    assert gold["ties"].tolist() == oracle["ties"].tolist()


def test_winrate_table_missing_prompts_raise():
    scores = _scores_frame()
    with pytest.raises(ValueError, match="no common prompts"):
        winrate_table(scores, ["absent"], ["drdo", "dpo"], ["oracle"], n_boot=10)
    no_dpo = scores[scores["policy"] != "dpo"]
    with pytest.raises(ValueError, match="no common prompts between drdo and dpo"):
        winrate_table(no_dpo, ["all"], ["drdo", "dpo"], ["oracle"], n_boot=10)
    no_reference = scores[scores["policy"] != "reference"]
    with pytest.raises(ValueError, match="no common prompts between reference and drdo"):
        winrate_table(no_reference, ["all"], ["drdo", "dpo"], ["oracle"], n_boot=10)
    partial = scores[~((scores["policy"] == "dpo") & (scores["prompt_id"] == "p2"))]
    with pytest.raises(ValueError, match="different prompts"):
        winrate_table(partial, ["all"], ["drdo", "dpo"], ["oracle"], n_boot=10)


def test_winrate_table_duplicate_rows_raise():
    scores = _scores_frame()
    dup = scores[(scores["policy"] == "drdo") & (scores["split"] == "all")].head(1)
    with pytest.raises(ValueError):  # pandas MergeError is a ValueError
        winrate_table(pd.concat([scores, dup]), ["all"], ["drdo", "dpo"], ["oracle"], n_boot=10)


def test_reference_is_compared_at_every_temperature():
    table = winrate_table(_scores_frame(), ["all"], ["drdo"], ["oracle"], n_boot=10)
    ref = table[table["policy_a"] == "reference"]
    assert ref["temperature"].tolist() == [0.25, 1.0]
    assert all(not math.isnan(t) for t in table["temperature"])
