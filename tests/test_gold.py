"""Gold reward, fact extraction and labeler probabilities (drdo.gold)."""

import numpy as np
import pytest

from drdo import synthetic
from drdo.gold import (GOLD_DEFAULTS, OBJECTS, SUBJECTS, VERBS, bayes_optimal_accuracy, extract_facts,
                       gold_reward, gold_rewards, preference_probability, render_fact, words)

# 3 facts -> length budget 5 * 3 + 2 = 17 words.
DOC = ("alice borrowed the car. i do not know what to do. bob sold the laptop. "
       "honestly, this has been going on for weeks. landlord kept the deposit.")
FULL = "alice borrowed the car and bob sold the laptop and landlord kept the deposit."  # 14 words


def test_vocabularies_are_single_lowercase_words_and_disjoint():
    for vocab in (SUBJECTS, VERBS, OBJECTS):
        assert len(set(vocab)) == len(vocab) and all(w.isalpha() and w.islower() for w in vocab)
    assert not (set(SUBJECTS) & set(VERBS) or set(SUBJECTS) & set(OBJECTS) or set(VERBS) & set(OBJECTS))
    assert (len(SUBJECTS), len(VERBS), len(OBJECTS)) == (20, 15, 20)


def test_extract_facts_finds_pattern_ignoring_case_punctuation_and_filler():
    assert extract_facts(DOC) == [("alice", "borrowed", "car"), ("bob", "sold", "laptop"),
                                  ("landlord", "kept", "deposit")]
    assert extract_facts("ALICE Borrowed THE car!!bob,sold;the  laptop") == [
        ("alice", "borrowed", "car"), ("bob", "sold", "laptop")]
    assert extract_facts("i do not know what to do. officials said on monday.") == []
    # near misses: missing article, doubled article, unknown words, wrong order
    for text in ("alice borrowed car", "alice borrowed the the car", "alice borrowed a car",
                 "zed borrowed the car", "car borrowed the alice", "alice the borrowed car"):
        assert extract_facts(text) == [], text
    assert extract_facts(render_fact(("mom", "hid", "keys"))) == [("mom", "hid", "keys")]


@pytest.mark.parametrize("summary, expected", [
    (FULL, 1.0),                                                             # full coverage
    ("bob sold the laptop and alice borrowed the car and landlord kept the deposit.", 1.0),  # any order
    ("alice borrowed the car and bob sold the laptop.", 2 / 3),               # one omitted fact
    ("alice borrowed the car and bob sold the laptop and sister broke the tv.", 2 / 3 - 0.5),  # 1 hallucination
    ("alice borrowed the car and bob sold the laptop and landlord sold the deposit.", 2 / 3 - 0.5),  # distortion
    # 14 + 7 + 7 = 28 words, 11 over budget
    (FULL + " i do not know what to do. this has been going on for weeks.", 1.0 - 0.05 * 11),
    ("", 0.0),                                                               # empty
    ("alice borrowed the car. alice borrowed the car.", 1 / 3),              # repeats count once
    ("asdf " * 30, -0.05 * 13),                                              # garbage: only length
    ("!!! ??? ... \n\t ÿÿ", -0.0),                                           # 1 unicode word, no facts
    ("alice borrowed the the car ### bob sold laptop", 0.0),                  # garbled facts
])
def test_gold_reward_hand_computed(summary, expected):
    assert gold_reward(DOC, summary) == pytest.approx(expected)


def test_gold_reward_params_and_edge_cases():
    halluc = "alice borrowed the car and bob sold the laptop and sister broke the tv."
    assert gold_reward(DOC, halluc, {"w_hallucination": 1.0}) == pytest.approx(2 / 3 - 1.0)
    assert gold_reward(DOC, "x " * 20, {"length_slack": 5}) == pytest.approx(0.0)  # 20 <= 15 + 5
    # no document facts: coverage 0, budget 2 words, so 2 excess words
    assert gold_reward("no facts here", "alice borrowed the car.") == pytest.approx(-0.5 - 0.05 * 2)
    assert gold_reward(DOC, FULL) == gold_reward(DOC, FULL, GOLD_DEFAULTS)
    with pytest.raises(ValueError, match="w_bogus"):
        gold_reward(DOC, FULL, {"w_bogus": 1.0})
    with pytest.raises(ValueError, match="w_length"):
        gold_reward(DOC, FULL, {"w_length": -1})
    assert words("Didn't  stop, ok?") == ["didn't", "stop", "ok"]


def test_gold_rewards_vectorised_matches_loop():
    summaries = [FULL, "", "alice borrowed the car.", "pad " * 40]
    docs = [DOC] * 3 + ["bob sold the laptop."]
    out = gold_rewards(docs, summaries)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, [gold_reward(d, s) for d, s in zip(docs, summaries)])
    with pytest.raises(ValueError):
        gold_rewards([DOC], [FULL, FULL])


def test_preference_probability_and_bayes_accuracy():
    assert preference_probability(1.0, 1.0, 0.25) == 0.5
    assert preference_probability(0.25, 0.0, 0.25) == pytest.approx(1 / (1 + np.exp(-1)))
    p = preference_probability(np.array([0.0, 1.0, -1000.0]), np.zeros(3), 0.25)
    np.testing.assert_allclose(p, [0.5, 1 / (1 + np.exp(-4)), 0.0], atol=1e-12)
    assert bayes_optimal_accuracy([0.0, 1.0], [0.0, 0.0], 0.25) == pytest.approx((0.5 + 1 / (1 + np.exp(-4))) / 2)
    assert bayes_optimal_accuracy([0.0, 0.0], [1.0, 0.0], 0.25) == bayes_optimal_accuracy([1.0, 0.0], [0.0, 0.0], 0.25)
    with pytest.raises(ValueError, match="label_temperature"):
        preference_probability(1.0, 0.0, 0.0)


def test_reference_beats_hallucinate_and_omit_on_average():
    rng = np.random.default_rng(7)
    scores = {k: [] for k in ("reference", "hallucinate", "omit", "faithful")}
    for _ in range(400):
        doc, facts = synthetic.make_document(rng, (2, 4), (2, 4))
        assert extract_facts(doc) == facts  # filler never creates or hides a fact
        ref = synthetic.join_facts(synthetic.reference_facts(rng, facts, 0.15))
        scores["reference"].append(gold_reward(doc, ref))
        for policy in ("hallucinate", "omit", "faithful"):
            scores[policy].append(gold_reward(doc, synthetic.candidate_summary(rng, facts, policy)))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["faithful"] == pytest.approx(1.0)
    assert mean["faithful"] > mean["reference"] > max(mean["hallucinate"], mean["omit"]) + 0.2
