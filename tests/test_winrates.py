"""Head-to-head win-rates: hand-computed counts, the outcome rules (identical text, unfinished
and unscorable responses), the score interval, the comparison table."""

import math

import numpy as np
import pandas as pd
import pytest

from drdo import io
from drdo.intervals import Z
from drdo.winrates import COLUMNS, comparisons, outcome_stats, outcomes, read_scores, winrate_table


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


def _text(policy, pid, temp):
    return {"response": f"{policy} on {pid} at {temp}", "finished": True, "too_long": False}


def _scores_frame(seed=0):
    rows = []
    for policy, by_temp in SCORES.items():
        split = "-" if policy == "sft" else "all"
        for temp, vals in by_temp.items():
            for pid, v in zip(PROMPTS, vals):
                rows.append({"policy": policy, "split": split, "eval_set": "tldr", "prompt_id": pid,
                             "temperature": temp, "oracle": v, "gold": -v, **_text(policy, pid, temp)})
                if policy != "sft":  # another split's policies must not leak in
                    rows.append({"policy": policy, "split": "other", "eval_set": "tldr", "prompt_id": pid,
                                 "temperature": temp, "oracle": 100.0, "gold": 100.0, **_text(policy, pid, temp)})
    for pid, v in zip(PROMPTS, REFERENCE):
        rows.append({"policy": "reference", "split": "-", "eval_set": "tldr", "prompt_id": pid,
                     "temperature": float("nan"), "oracle": v, "gold": -v, **_text("reference", pid, None)})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_winrate_table_rows_and_counts():
    table = winrate_table(_scores_frame(), ["all"], ["drdo", "dpo"], ["oracle"])
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
    assert (table["unfinished_a"] == 0).all() and (table["n_too_long"] == 0).all()
    # deterministic: the same frame gives the same table, CIs included
    again = winrate_table(_scores_frame(), ["all"], ["drdo", "dpo"], ["oracle"])
    pd.testing.assert_frame_equal(again, table)
    # independent of the row order of the scores frame
    shuffled = winrate_table(_scores_frame(seed=7), ["all"], ["drdo", "dpo"], ["oracle"])
    cols = ["policy_a", "policy_b", "temperature", "wins", "ties", "losses", "n", "win_rate"]
    pd.testing.assert_frame_equal(shuffled[cols], table[cols])


def test_winrate_ci_independent_of_scores_row_order():
    table = winrate_table(_scores_frame(), ["all"], ["drdo", "dpo"], ["oracle"])
    shuffled = winrate_table(_scores_frame(seed=7), ["all"], ["drdo", "dpo"], ["oracle"])
    pd.testing.assert_frame_equal(shuffled, table)


def test_winrate_table_several_scorers():
    table = winrate_table(_scores_frame(), ["all"], ["drdo", "dpo"], ["oracle", "gold"])
    assert len(table) == 2 * len(EXPECTED)
    assert table["scorer"].tolist() == ["oracle", "gold"] * len(EXPECTED)
    oracle, gold = table[table["scorer"] == "oracle"], table[table["scorer"] == "gold"]
    # gold = -oracle, so wins and losses swap
    assert gold["wins"].tolist() == oracle["losses"].tolist()
    assert gold["ties"].tolist() == oracle["ties"].tolist()


def test_winrate_table_missing_prompts_raise():
    scores = _scores_frame()
    with pytest.raises(ValueError, match="no common prompts"):
        winrate_table(scores, ["absent"], ["drdo", "dpo"], ["oracle"])
    no_dpo = scores[scores["policy"] != "dpo"]
    with pytest.raises(ValueError, match="no common prompts between drdo and dpo"):
        winrate_table(no_dpo, ["all"], ["drdo", "dpo"], ["oracle"])
    no_reference = scores[scores["policy"] != "reference"]
    with pytest.raises(ValueError, match="no common prompts between reference and drdo"):
        winrate_table(no_reference, ["all"], ["drdo", "dpo"], ["oracle"])
    partial = scores[~((scores["policy"] == "dpo") & (scores["prompt_id"] == "p2"))]
    with pytest.raises(ValueError, match="different prompts"):
        winrate_table(partial, ["all"], ["drdo", "dpo"], ["oracle"])


def test_winrate_table_duplicate_rows_raise():
    scores = _scores_frame()
    dup = scores[(scores["policy"] == "drdo") & (scores["split"] == "all")].head(1)
    with pytest.raises(ValueError):  # pandas MergeError is a ValueError
        winrate_table(pd.concat([scores, dup]), ["all"], ["drdo", "dpo"], ["oracle"])


def test_reference_is_compared_at_every_temperature():
    table = winrate_table(_scores_frame(), ["all"], ["drdo"], ["oracle"])
    ref = table[table["policy_a"] == "reference"]
    assert ref["temperature"].tolist() == [0.25, 1.0]
    assert all(not math.isnan(t) for t in table["temperature"])


# --------------------------------------------------------------------------- outcome rules
def _pairs(a, b, text_a=None, text_b=None, fin_a=None, fin_b=None):
    """pair_frame-shaped rows: A's and B's oracle scores, texts and finished flags."""
    n = len(a)
    return pd.DataFrame({"oracle_a": a, "oracle_b": b,
                         "response_a": text_a or [f"a{i}" for i in range(n)],
                         "response_b": text_b or [f"b{i}" for i in range(n)],
                         "finished_a": fin_a or [True] * n, "finished_b": fin_b or [True] * n})


def test_identical_responses_tie_whatever_the_scores():
    # the Oracle's scores of one text packed in two batches differ in the last digits
    p = _pairs([1.0 + 1e-6, 2.0, 3.0], [1.0, 2.0 + 1e-6, 1.0], text_a=["same", "x", "p"], text_b=["same", "x", "q"])
    assert outcomes(p, "oracle").tolist() == [0.5, 0.5, 1.0]
    # a different text with a (numerically) equal score is a tie too; 1e-6 apart is not
    p = _pairs([1.0 + 1e-12, 1.0 + 1e-6], [1.0, 1.0])
    assert outcomes(p, "oracle").tolist() == [0.5, 1.0]


def test_unfinished_responses_by_rule():
    # A: win, win, loss, win, tie-by-text; A unfinished on prompts 1 and 4, B on 2 and 3
    p = _pairs([2.0, 2.0, 0.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0],
               text_a=["a0", "a1", "a2", "a3", "s"], text_b=["b0", "b1", "b2", "b3", "s"],
               fin_a=[True, False, True, True, False], fin_b=[True, True, False, False, True])
    assert outcomes(p, "oracle", "as_scored").tolist() == [1.0, 1.0, 0.0, 1.0, 0.5]
    # loss: unfinished loses to finished (prompts 1, 2 and 3 flip to that), identical text still ties
    assert outcomes(p, "oracle", "loss").tolist() == [1.0, 0.0, 1.0, 1.0, 0.5]
    both = _pairs([2.0], [1.0], fin_a=[False], fin_b=[False])
    assert outcomes(both, "oracle", "loss").tolist() == [0.5]
    dropped = outcomes(p, "oracle", "drop")
    assert dropped[0] == 1.0 and np.isnan(dropped[1:]).all()
    with pytest.raises(ValueError, match="winrates.unfinished"):
        outcomes(p, "oracle", "ignore")


def _write(tmp_path, name, df):
    path = str(tmp_path / f"{name}.parquet")
    io.write_parquet(df, path, {"stage": "test"})
    return path


def test_winrate_table_reports_unfinished_shares_and_rule(tmp_path):
    scores = _scores_frame()
    drdo = (scores["policy"] == "drdo") & (scores["split"] == "all") & (scores["temperature"] == 0.25)
    scores.loc[drdo & (scores["prompt_id"] == "p0"), "finished"] = False  # drdo beat dpo on p0 (1 > 0)
    table = winrate_table(scores, ["all"], ["drdo", "dpo"], ["oracle"])
    row = table[(table["policy_a"] == "drdo") & (table["policy_b"] == "dpo") & (table["temperature"] == 0.25)].iloc[0]
    assert (row["unfinished_a"], row["unfinished_b"], row["wins"]) == (pytest.approx(1 / 3), 0.0, 1)
    ref = table[(table["policy_a"] == "reference") & (table["policy_b"] == "drdo") & (table["temperature"] == 0.25)]
    assert (ref["unfinished_a"].item(), ref["unfinished_b"].item()) == (0.0, pytest.approx(1 / 3))
    loss = winrate_table(scores, ["all"], ["drdo", "dpo"], ["oracle"], "loss")
    row = loss[(loss["policy_a"] == "drdo") & (loss["policy_b"] == "dpo") & (loss["temperature"] == 0.25)].iloc[0]
    assert (row["wins"], row["ties"], row["losses"], row["n"]) == (0, 1, 2, 3)
    drop = winrate_table(scores, ["all"], ["drdo", "dpo"], ["oracle"], "drop")
    row = drop[(drop["policy_a"] == "drdo") & (drop["policy_b"] == "dpo") & (drop["temperature"] == 0.25)].iloc[0]
    assert (row["wins"], row["ties"], row["losses"], row["n"], row["n_too_long"], row["n_dropped"]) == (0, 1, 1, 2, 0, 1)
    assert (table["n_dropped"] == 0).all() and (loss["n_dropped"] == 0).all()  # only 'drop' leaves prompts out


# (oracle_a, oracle_b, finished_a, finished_b, same text) -> outcome under as_scored, loss, drop;
# NaN scores are responses too long to score
RULES = [
    ((2.0, 1.0, True, True, False), (1.0, 1.0, 1.0)),
    ((1.0, 2.0, False, True, False), (0.0, 0.0, np.nan)),
    ((2.0, 1.0, False, True, False), (1.0, 0.0, np.nan)),       # unfinished A loses, whatever its score
    ((1.0, 2.0, True, False, False), (0.0, 1.0, np.nan)),
    ((1.0, 2.0, False, False, False), (0.0, 0.5, np.nan)),      # both unfinished: a tie
    ((np.nan, 2.0, False, True, False), (np.nan, 0.0, np.nan)),  # too long and unfinished: loses without a score
    ((2.0, np.nan, True, False, False), (np.nan, 1.0, np.nan)),
    ((np.nan, 2.0, True, True, False), (np.nan, np.nan, np.nan)),  # too long, finished: left out under every rule
    ((1.0, 2.0, True, True, True), (0.5, 0.5, 0.5)),           # identical texts tie whatever the scores
    ((np.nan, np.nan, False, False, True), (0.5, 0.5, np.nan)),
]


@pytest.mark.parametrize("rule", ["as_scored", "loss", "drop"])
def test_outcome_rules_on_every_case(rule):
    pairs = pd.DataFrame([{"oracle_a": a, "oracle_b": b, "finished_a": fa, "finished_b": fb,
                           "response_a": "x", "response_b": "x" if same else "y"}
                          for (a, b, fa, fb, same), _ in RULES])
    expected = [want[["as_scored", "loss", "drop"].index(rule)] for _, want in RULES]
    np.testing.assert_array_equal(outcomes(pairs, "oracle", rule), expected)


def test_too_long_is_left_out_and_counted_any_other_missing_score_is_an_error(tmp_path):
    scores = _scores_frame()
    sel = (scores["policy"] == "dpo") & (scores["split"] == "all") & (scores["prompt_id"] == "p1")
    ok = scores.copy()
    ok.loc[sel, "oracle"], ok.loc[sel, "too_long"] = np.nan, True
    paths = [_write(tmp_path, f"ok{i}", g) for i, (_, g) in enumerate(ok.groupby("policy"))]
    table = winrate_table(read_scores(paths, ["oracle", "gold"]), ["all"], ["drdo", "dpo"], ["oracle", "gold"])
    row = table[(table["policy_a"] == "drdo") & (table["policy_b"] == "dpo") & (table["temperature"] == 1.0)]
    by = row.set_index("scorer")
    assert (by.loc["oracle", "n"], by.loc["oracle", "n_too_long"]) == (2, 1)  # p1 left out, counted
    assert (by.loc["gold", "n"], by.loc["gold", "n_too_long"]) == (3, 0)  # gold scores any length
    bad = scores.copy()
    bad.loc[sel, "gold"] = np.nan  # not too long: a NaN here is a bug upstream, not a dropped prompt
    path = _write(tmp_path, "bad", bad[bad["policy"] == "dpo"].reset_index(drop=True))
    with pytest.raises(ValueError, match=r"bad\.parquet: row \d+ \(dpo, tldr, prompt p1, T=\S+\) has no gold score.*2 such rows"):
        read_scores([path], ["oracle", "gold"])
    old = _write(tmp_path, "old", scores.drop(columns=["finished", "too_long"]))
    with pytest.raises(ValueError, match="old.parquet: no column"):
        read_scores([old], ["oracle"])


# --------------------------------------------------------------------------- the interval
def _score_bounds_by_search(outcome):
    """The interval scanned over d = P(win) - P(loss) from its definition: at each d the
    maximum-likelihood P(loss) q found by ternary search on the (concave) log-likelihood, not by
    the code's closed form; the win-rate bounds are (1 + d) / 2 at the scan's ends."""
    o = np.asarray(outcome, dtype=float)
    n, wins, losses = len(o), (o == 1).sum(), (o == 0).sum()
    ties = n - wins - losses
    d = np.linspace(-1, 1, 400_001)
    lo_q, hi_q = np.maximum(0.0, -d), (1 - d) / 2

    def loglik(q):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = [k * np.log(x) if k else np.zeros_like(x) for k, x in ((wins, q + d), (losses, q), (ties, 1 - 2 * q - d))]
        return sum(terms)

    a, b = lo_q.copy(), hi_q.copy()
    for _ in range(100):
        m1, m2 = a + (b - a) / 3, b - (b - a) / 3
        left = loglik(m1) < loglik(m2)
        a, b = np.where(left, m1, a), np.where(left, b, m2)
    q = (a + b) / 2
    inside = np.maximum(np.abs(wins - losses - n * d) - 1, 0) ** 2 <= Z ** 2 * n * (2 * q + d * (1 - d)) + 1e-9
    return (1 + d[inside].min()) / 2, (1 + d[inside].max()) / 2


@pytest.mark.parametrize("wins,ties,losses", [(100, 0, 0), (0, 0, 100), (60, 0, 40), (30, 20, 50), (1, 2, 97),
                                               (0, 3, 0), (2, 45, 3), (0, 48, 2), (7, 1, 0)])
def test_score_interval_matches_its_definition(wins, ties, losses):
    outcome = np.r_[np.ones(wins), np.full(ties, 0.5), np.zeros(losses)]
    r = outcome_stats(outcome)
    lo, hi = _score_bounds_by_search(outcome)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo, abs=1e-5), pytest.approx(hi, abs=1e-5))
    assert r["ci_low"] <= r["win_rate"] <= r["ci_high"]
    if wins == 100:  # all prompts won: not the percentile bootstrap's [1, 1]
        assert r["ci_high"] == 1.0 and 0.95 < r["ci_low"] < 0.97


def test_outcome_stats_counts_and_symmetry():
    r = outcome_stats(np.array([1.0, 0.5, 0.0, 1.0, np.nan]))  # NaN: left out
    assert (r["wins"], r["ties"], r["losses"], r["n"], r["win_rate"]) == (2, 1, 1, 4, 0.625)
    s = outcome_stats(np.array([0.0, 0.5, 1.0, 0.0]))
    assert s["ci_low"] == pytest.approx(1 - r["ci_high"]) and s["ci_high"] == pytest.approx(1 - r["ci_low"])
    assert math.isnan(outcome_stats(np.array([np.nan]))["win_rate"])
