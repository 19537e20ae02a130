"""The synthetic TL;DR world (drdo.synthetic): determinism, schemas, labeler behaviour."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from drdo import synthetic
from drdo.gold import FACT_WORDS, extract_facts, gold_rewards, words
from drdo.prompts import tldr_prompt
from drdo.synthetic import SYNTHETIC_DEFAULTS, generate_world, main, resolve_config

FILES = ("comparisons.jsonl", "sft_train.jsonl", "sft_valid.jsonl", "sft_test.jsonl", "news_test.jsonl")
SMALL = {"seed": 3, "n_train_posts": 40, "n_valid_posts": 10, "n_test_posts": 5, "n_news": 5}


def _read(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world with ~3000 train pairs, enough for stable label statistics."""
    out = tmp_path_factory.mktemp("world")
    stats = generate_world({"seed": 11, "n_train_posts": 1500}, out)
    return out, stats, {name: _read(out / name) for name in FILES}


def test_filler_vocabulary_shares_no_word_with_facts():
    for style in (synthetic.TLDR_FILLER, synthetic.NEWS_FILLER):
        filler_words = {w for pieces in style for piece in pieces for w in words(piece)}
        assert not filler_words & FACT_WORDS, filler_words & FACT_WORDS


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    generate_world(SMALL, tmp_path / "a")
    generate_world(dict(SMALL), tmp_path / "b")
    generate_world({**SMALL, "seed": 4}, tmp_path / "c")
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name


def test_parts_of_the_world_do_not_depend_on_other_counts(tmp_path):
    generate_world(SMALL, tmp_path / "a")
    generate_world({**SMALL, "n_news": 9, "n_train_posts": 20}, tmp_path / "b")
    a, b = (_read(tmp_path / d / "comparisons.jsonl") for d in "ab")
    pairs = SYNTHETIC_DEFAULTS["pairs_per_post"]
    assert b[:20 * pairs] == a[:20 * pairs]  # same first train posts
    assert [r for r in b if r["split"] == "valid1"] == [r for r in a if r["split"] == "valid1"]
    assert _read(tmp_path / "b" / "news_test.jsonl")[:5] == _read(tmp_path / "a" / "news_test.jsonl")


def test_comparisons_schema(world):
    _, stats, data = world
    rows = data["comparisons.jsonl"]
    assert len(rows) == (1500 + 150) * 2
    assert stats["n_comparisons"] == {"train": 3000, "valid1": 300}
    for row in rows:
        assert set(row) == {"info", "summaries", "choice", "worker", "batch", "split", "extra"}
        info = row["info"]
        assert set(info) == {"id", "post", "title", "subreddit", "site", "article"}
        assert all(isinstance(info[k], str) and info[k] for k in ("id", "post", "title", "subreddit"))
        assert info["site"] is None and info["article"] is None and info["id"].startswith("t3_")
        assert len(row["summaries"]) == 2 and row["summaries"][0]["text"] != row["summaries"][1]["text"]
        for s in row["summaries"]:
            assert set(s) == {"text", "policy", "note"} and s["note"] is None
            assert isinstance(s["text"], str) and s["text"] and s["policy"] in synthetic.POLICIES
        assert row["choice"] in (0, 1) and row["split"] in ("train", "valid1")
        assert re.fullmatch(r"w\d\d", row["worker"]) and re.fullmatch(r"batch\d+", row["batch"])
        conf = row["extra"]["confidence"]
        assert set(row["extra"]) == {"confidence"} and isinstance(conf, int) and 1 <= conf <= 9
        facts = extract_facts(info["post"])
        assert 2 <= len(facts) <= 4 and len({f[0] for f in facts}) == len(facts)
    assert [r["split"] for r in rows] == ["train"] * 3000 + ["valid1"] * 300


def test_sft_and_news_schema(world):
    _, _, data = world
    comps = data["comparisons.jsonl"]
    for split, name, n in (("train", "sft_train.jsonl", 1500), ("valid1", "sft_valid.jsonl", 150)):
        rows = data[name]
        assert len(rows) == n
        posts = list({r["info"]["id"]: r["info"] for r in comps if r["split"] == split}.values())
        assert [r["prompt"] for r in rows] == [tldr_prompt(p["subreddit"], p["title"], p["post"]) for p in posts]
    for name in ("sft_train.jsonl", "sft_valid.jsonl", "sft_test.jsonl"):
        for row in data[name]:
            assert set(row) == {"prompt", "label"} and row["prompt"].endswith("TL;DR:")
            post = row["prompt"].split("\nPOST: ", 1)[1]
            doc, ref = set(extract_facts(post)), extract_facts(row["label"])
            assert set(ref) <= doc and len(ref) >= len(doc) - 1 and len(ref) == len(set(ref))
    assert len(data["sft_test.jsonl"]) == 100
    train_prompts = {r["prompt"] for r in data["sft_train.jsonl"]}
    assert not train_prompts & {r["prompt"] for r in data["sft_test.jsonl"]}
    news = data["news_test.jsonl"]
    assert len(news) == 100 and len({r["id"] for r in news}) == 100
    for row in news:
        assert set(row) == {"id", "article", "highlights"} and re.fullmatch(r"[0-9a-f]{40}", row["id"])
        doc = extract_facts(row["article"])
        lines = row["highlights"].split("\n")
        assert 3 <= len(doc) <= 5 and len(lines) >= len(doc) - 1
        assert all(len(extract_facts(line)) == 1 and extract_facts(line)[0] in doc for line in lines)


def test_reference_omission_rate(world):
    _, stats, data = world
    rows = data["sft_train.jsonl"]
    omitted = np.mean([len(extract_facts(r["label"])) < len(extract_facts(r["prompt"])) for r in rows])
    assert 0.10 < omitted < 0.20 and abs(stats["reference_omit_fraction"] - 0.15) < 0.05


def test_labels_follow_gold_and_confidence_tracks_strength(world):
    _, stats, data = world
    rows = data["comparisons.jsonl"]
    posts = [r["info"]["post"] for r in rows]
    r0 = gold_rewards(posts, [r["summaries"][0]["text"] for r in rows])
    r1 = gold_rewards(posts, [r["summaries"][1]["text"] for r in rows])
    conf = np.array([r["extra"]["confidence"] for r in rows])
    choice = np.array([r["choice"] for r in rows])
    gap = np.abs(r0 - r1)
    spearman = np.corrcoef(pd.Series(conf).rank(), pd.Series(gap).rank())[0, 1]
    assert spearman > 0.5 and np.corrcoef(conf, gap)[0, 1] > 0.5
    decided = gap > 1e-9
    agree = (choice == 0) == (r0 > r1)
    low, high = decided & (conf <= 3), decided & (conf >= 7)
    assert low.sum() > 100 and high.sum() > 500
    assert agree[low].mean() + 0.15 < agree[high].mean()
    assert abs(agree[decided].mean() - stats["label_agreement_with_gold"]) < 1e-3
    # ties are coin flips: about half choose summary 0
    assert 0.4 < (choice[~decided] == 0).mean() < 0.6
    assert set(stats["policy_counts"]) == set(synthetic.POLICIES) and min(stats["policy_counts"].values()) > 500


@pytest.mark.parametrize("key, value", [
    ("seed", -1), ("seed", 1.5), ("n_train_posts", 0), ("n_valid_posts", -3), ("n_test_posts", "10"),
    ("n_news", 0), ("pairs_per_post", 0), ("facts_per_post", [4, 2]), ("facts_per_post", [0, 2]),
    ("facts_per_post", [2, 21]), ("filler_per_post", [3]), ("news_facts", [3.0, 5]), ("news_filler", [5, 4]),
    ("reference_omit_prob", 1.5), ("label_temperature", 0), ("label_temperature", -0.1),
    ("confidence_noise", -1), ("gold", {"w_coverage": "x"}), ("gold", {"nope": 1}), ("bogus_key", 1),
])
def test_invalid_config_names_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        generate_world({key: value}, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_defaults_and_cli(tmp_path, capsys):
    c = resolve_config(None)
    assert c["gold"]["w_coverage"] == 1.0 and c["n_train_posts"] == 1200 and c["label_temperature"] == 0.25
    assert main(["--config-json", json.dumps(SMALL), "--out-dir", str(tmp_path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_comparisons"] == {"train": 80, "valid1": 20}
    assert all((tmp_path / name).exists() for name in FILES)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["stage"] == "synthetic" and prov["config"] == SMALL and prov["stats"] == stats


def test_sft_extra_posts_extend_only_the_sft_train_rows(tmp_path):
    generate_world(SMALL, tmp_path / "a")
    generate_world({**SMALL, "n_sft_extra_posts": 7}, tmp_path / "b")
    a, b = _read(tmp_path / "a" / "sft_train.jsonl"), _read(tmp_path / "b" / "sft_train.jsonl")
    assert b[:len(a)] == a and len(b) == len(a) + 7
    assert not {r["prompt"] for r in b[len(a):]} & {r["prompt"] for r in a}
    for name in ("comparisons.jsonl", "sft_test.jsonl", "news_test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(ValueError, match="n_sft_extra_posts"):
        generate_world({"n_sft_extra_posts": -1}, tmp_path / "c")
