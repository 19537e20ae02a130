"""Gold reward and simulated labeler of the synthetic TL;DR world.

A *fact* is a triple (subject, verb, object) written as the clause ``"{subject} {verb} the
{object}"``. The gold reward of a summary of a document rewards covering the document's
facts, penalises facts that are not in the document (hallucinations) and penalises words
beyond a budget proportional to the number of facts:

    w_coverage * covered / n_doc_facts
    - w_hallucination * n_hallucinated
    - w_length * max(0, n_words - (words_per_fact * n_doc_facts + length_slack))

It is used both to label synthetic comparisons and to score model generations, so it works
on any string: facts are found by scanning lower-cased words for SUBJECT VERB "the" OBJECT,
and punctuation, casing and garbage around them are ignored.

The labeler prefers summary 0 with probability ``sigmoid((r0 - r1) / temperature)``.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import numpy as np

SUBJECTS = (
    "alice", "bob", "carol", "dave", "emma", "frank", "grace", "henry", "landlord", "roommate",
    "sister", "brother", "boss", "coworker", "neighbor", "girlfriend", "boyfriend", "mom", "dad",
    "cousin",
)
VERBS = (
    "borrowed", "broke", "sold", "ignored", "lost", "stole", "returned", "damaged", "hid",
    "bought", "repaired", "kept", "cancelled", "painted", "crashed",
)
OBJECTS = (
    "car", "laptop", "rent", "phone", "keys", "dog", "deposit", "couch", "bike", "tv", "fridge",
    "lease", "jacket", "ring", "wallet", "guitar", "camera", "printer", "passport", "cat",
)
ARTICLE = "the"
FACT_WORDS = frozenset(SUBJECTS) | frozenset(VERBS) | frozenset(OBJECTS) | {ARTICLE}

GOLD_DEFAULTS = {
    "w_coverage": 1.0,
    "w_hallucination": 0.5,
    "w_length": 0.05,
    "words_per_fact": 5,
    "length_slack": 2,
}

Fact = tuple[str, str, str]
_SUBJ, _VERB, _OBJ = frozenset(SUBJECTS), frozenset(VERBS), frozenset(OBJECTS)
# Letters/digits, with inner apostrophes ("didn't" is one word); punctuation separates words.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``; the unit of both fact extraction and length."""
    return _WORD.findall(text.lower()) if text else []


def render_fact(fact: Fact) -> str:
    subject, verb, obj = fact
    return f"{subject} {verb} {ARTICLE} {obj}"


def extract_facts(text: str) -> list[Fact]:
    """Fact triples in ``text`` in order of appearance (repeats kept)."""
    w = words(text)
    return [
        (w[i], w[i + 1], w[i + 3])
        for i in range(len(w) - 3)
        if w[i] in _SUBJ and w[i + 1] in _VERB and w[i + 2] == ARTICLE and w[i + 3] in _OBJ
    ]


def resolve_gold_params(params: Mapping | None = None) -> dict:
    """GOLD_DEFAULTS overridden by ``params``; ValueError names any unknown or invalid key."""
    out = dict(GOLD_DEFAULTS)
    for key, value in (params or {}).items():
        if key not in GOLD_DEFAULTS:
            raise ValueError(f"gold.{key}: unknown gold parameter (known: {sorted(GOLD_DEFAULTS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"gold.{key}: must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError(f"gold.{key}: must be >= 0, got {value!r}")
        out[key] = value
    return out


def _reward(doc_facts: set[Fact], summary: str, p: dict) -> float:
    summ_facts = set(extract_facts(summary))
    coverage = len(doc_facts & summ_facts) / len(doc_facts) if doc_facts else 0.0
    hallucinated = len(summ_facts - doc_facts)
    budget = p["words_per_fact"] * len(doc_facts) + p["length_slack"]
    excess = max(0.0, len(words(summary)) - budget)
    return float(p["w_coverage"] * coverage - p["w_hallucination"] * hallucinated - p["w_length"] * excess)


def gold_reward(document: str, summary: str, params: Mapping | None = None) -> float:
    """Gold reward of ``summary`` as a summary of ``document`` (see module docstring)."""
    return _reward(set(extract_facts(document)), summary, resolve_gold_params(params))


def gold_rewards(documents: Iterable[str], summaries: Iterable[str], params: Mapping | None = None) -> np.ndarray:
    """``gold_reward`` over paired sequences; repeated documents are parsed once."""
    p = resolve_gold_params(params)
    documents, summaries = list(documents), list(summaries)
    if len(documents) != len(summaries):
        raise ValueError(f"{len(documents)} documents but {len(summaries)} summaries")
    cache: dict[str, set[Fact]] = {}
    out = np.empty(len(summaries), dtype=np.float64)
    for i, (doc, summ) in enumerate(zip(documents, summaries)):
        if doc not in cache:
            cache[doc] = set(extract_facts(doc))
        out[i] = _reward(cache[doc], summ, p)
    return out


def preference_probability(r0, r1, temperature: float):
    """P(summary 0 preferred) = sigmoid((r0 - r1) / temperature); scalars or arrays."""
    if not temperature > 0:
        raise ValueError(f"label_temperature: must be > 0, got {temperature!r}")
    z = (np.asarray(r0, dtype=np.float64) - np.asarray(r1, dtype=np.float64)) / temperature
    p = 0.5 * (1.0 + np.tanh(0.5 * z))  # = sigmoid(z), without overflow warnings
    return float(p) if p.ndim == 0 else p


def bayes_optimal_accuracy(r0s, r1s, temperature: float) -> float:
    """Expected accuracy of the best possible predictor of the labeler's choices."""
    p0 = np.atleast_1d(preference_probability(r0s, r1s, temperature))
    return float(np.mean(np.maximum(p0, 1.0 - p0))) if p0.size else float("nan")
