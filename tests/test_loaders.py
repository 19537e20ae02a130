"""Loaders on small fixtures in the real datasets' schemas (tests/fixtures/*.jsonl)."""

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drdo.data.loaders import (COMPARISON_COLUMNS, EVAL_COLUMNS, eval_prompts, load_comparisons,
                               load_news, load_sft)
from drdo.prompts import news_prompt, tldr_prompt

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def comparisons():
    return load_comparisons(FIX / "comparisons.jsonl")


def by_post(df, post_id):
    return df[df["post_id"] == post_id].iloc[0]


# ---------------------------------------------------------------------------- comparisons

def test_comparison_drop_counts(comparisons):
    df, drops = comparisons
    assert drops == {"invalid_json": 1, "missing_field": 2, "empty_response": 1,
                     "identical_responses": 1, "bad_confidence": 2, "duplicate_pair": 1}
    assert list(df.columns) == COMPARISON_COLUMNS
    assert len(df) == 5
    assert df["confidence"].dtype == "int64"


def test_chosen_follows_choice(comparisons):
    df, _ = comparisons
    r0 = by_post(df, "t3_b2")  # choice 1
    assert (r0.chosen, r0.rejected) == ("My landlord refuses to return my deposit after I moved out.",
                                        "Landlord kept my deposit.")
    assert (r0.chosen_policy, r0.rejected_policy, r0.confidence) == ("ref", "sup2", 3)
    r1 = by_post(df, "t3_c3")  # choice 0
    assert (r1.chosen, r1.rejected) == ("Lost my job, what now?",
                                        "Got fired today and I am scared about rent.")
    assert (r1.chosen_policy, r1.rejected_policy) == ("sup2", "ref")


def test_splits_mapped(comparisons):
    df, _ = comparisons
    assert dict(zip(df["post_id"], df["split"])) == {
        "t3_a1": "train", "t3_b2": "train", "t3_c3": "validation", "cnn-d4": "validation"}


def test_prompt_and_cnndm_row(comparisons):
    df, _ = comparisons
    r = by_post(df, "t3_b2")
    assert r.prompt == tldr_prompt("relationships", "Title b2", "Post text b2. I need advice.")
    assert r.document == "Post text b2. I need advice."
    cnn = by_post(df, "cnn-d4")  # post null, subreddit null: text comes from info.article
    article = "A man jumped into the river on Sunday to rescue a drowning dog."
    assert cnn.document == article
    assert cnn.prompt == tldr_prompt("", "Hero saves dog", article)


def test_pair_ids_deterministic(comparisons):
    df, _ = comparisons
    r = by_post(df, "t3_c3")
    blob = "t3_c3\x00" + r.chosen + "\x00" + r.rejected
    assert r.pair_id == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert df["pair_id"].is_unique
    again, _ = load_comparisons(FIX / "comparisons.jsonl")
    assert again["pair_id"].tolist() == df["pair_id"].tolist()


def test_drops_logged_with_first_line(caplog):
    with caplog.at_level(logging.WARNING, logger="drdo.data"):
        load_comparisons(FIX / "comparisons.jsonl")
    lines = [r.getMessage() for r in caplog.records if r.name == "drdo.data"]
    assert len(lines) == 6  # one per reason with a non-zero count
    assert any("invalid_json" in m and "line 6" in m and "comparisons.jsonl" in m for m in lines)
    assert any("dropped 2 row(s): bad_confidence (first at line 11)" in m for m in lines)


def test_no_surviving_rows_names_file(tmp_path):
    path = tmp_path / "all_bad.jsonl"
    path.write_text('not json\n{"info": {}, "choice": 0}\n')
    with pytest.raises(ValueError, match="all_bad.jsonl"):
        load_comparisons(path)


def _valid_rows():
    rows = []
    for line in (FIX / "comparisons.jsonl").read_text().splitlines()[:5]:
        rows.append(json.loads(line))
    return rows


def test_parquet_and_json_sources_match_jsonl(tmp_path, comparisons):
    rows = _valid_rows()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    (tmp_path / "c.json").write_text(json.dumps(rows))
    expected = comparisons[0]
    for name in ("c.parquet", "c.json"):
        df, drops = load_comparisons(tmp_path / name)
        pd.testing.assert_frame_equal(df, expected)
        assert sum(drops.values()) == 0


# ---------------------------------------------------------------------------- SFT / news

def test_sft():
    df, drops = load_sft(FIX / "sft.jsonl")
    assert drops == {"invalid_json": 1, "missing_field": 1, "empty_response": 1, "duplicate": 1}
    assert list(df.columns) == ["prompt", "response", "document"]
    assert df["response"].tolist() == ["Locked myself out of my flat.", "Asking for pizza toppings.",
                                       "A plain prompt."]
    # The post's own "TL;DR:" stays in the document; only the template's last one ends it.
    assert df["document"].tolist() == ["I locked my keys inside.\nTL;DR: keys inside.",
                                       "What is the best pizza topping?",
                                       "Summarize this text without a post marker."]
    assert df["prompt"][1] == tldr_prompt("AskReddit", "Best pizza?", "What is the best pizza topping?")


def test_news():
    df, drops = load_news(FIX / "news.jsonl")
    assert drops == {"invalid_json": 1, "missing_field": 1, "empty_response": 1, "duplicate": 1}
    assert df["prompt_id"].tolist() == ["n1", "n2", "n3"]
    assert df["reference"].tolist() == ["Council votes to expand park . Vote was 7-2 .",
                                        "Rain all week .", "Bridge opens ."]
    assert df["prompt"][1] == news_prompt("LONDON (Reuters) Rain is expected all week.")
    assert df["document"][1] == "LONDON (Reuters) Rain is expected all week."


def test_eval_prompts():
    sft, _ = load_sft(FIX / "sft.jsonl")
    news, _ = load_news(FIX / "news.jsonl")
    ev = eval_prompts(sft, news, n_tldr=2, n_news=10, seed=0)
    assert list(ev.columns) == EVAL_COLUMNS
    assert ev["eval_set"].value_counts().to_dict() == {"tldr": 2, "news": 3}  # news: all 3
    tldr = ev[ev["eval_set"] == "tldr"]
    for _, r in tldr.iterrows():
        assert r.prompt_id == hashlib.sha256(r.prompt.encode()).hexdigest()[:16]
        src = sft[sft["prompt"] == r.prompt].iloc[0]
        assert (r.document, r.reference) == (src.document, src.response)
    assert set(ev.loc[ev["eval_set"] == "news", "reference"]) == set(news["reference"])
    pd.testing.assert_frame_equal(ev, eval_prompts(sft, news, 2, 10, seed=0))
