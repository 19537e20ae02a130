"""A deterministic synthetic TL;DR world, written in the schemas of the real datasets.

Every document carries a few KEY FACTS, clauses ``"{subject} {verb} the {object}"`` with
distinct subjects (vocabularies in :mod:`drdo.gold`), interleaved with FILLER sentences
built from a separate vocabulary that shares no word with the facts and never uses "the",
so the facts of any text can be read back exactly (:func:`drdo.gold.extract_facts`).

* TL;DR posts (reddit style filler) play ``openai/summarize_from_feedback`` and
  ``CarperAI/openai_summarize_tldr``; news articles (same facts, news style filler, more of
  both) play ``abisee/cnn_dailymail``, the out-of-distribution test.
* SFT rows are the reference summaries of the compared train posts plus
  ``n_sft_extra_posts`` SFT-only posts (the real TL;DR SFT set is also larger than the set
  of compared posts).
* The reference ("human") summary lists the facts in document order, joined by " and ", and
  with probability ``reference_omit_prob`` forgets one of them.
* Comparison candidates come from simulated policies (``POLICIES``): faithful, omit,
  distort (changes a verb or object), hallucinate (adds a fact), pad (adds filler) and mixed.
* A simulated labeler prefers summary 0 with probability sigmoid((r0 - r1) / T) on the gold
  rewards and reports a 1-9 confidence that grows with |2 p0 - 1|, plus noise.

Sentences end with "." attached to their last word. Each post, article and pair draws from
its own generator seeded by (seed, stream, index), so the same config gives byte-identical
files and, e.g., changing ``n_news`` leaves the TL;DR files unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from drdo.gold import (OBJECTS, SUBJECTS, VERBS, Fact, _reward, bayes_optimal_accuracy,
                       preference_probability, render_fact, resolve_gold_params)
from drdo.io import provenance, write_json, write_jsonl
from drdo.prompts import tldr_prompt

SYNTHETIC_DEFAULTS = {
    "seed": 0,
    "n_train_posts": 1200,
    "n_valid_posts": 150,
    "n_test_posts": 100,
    "n_news": 100,
    "n_sft_extra_posts": 0,
    "pairs_per_post": 2,
    "facts_per_post": [2, 4],
    "filler_per_post": [2, 4],
    "news_facts": [3, 5],
    "news_filler": [4, 7],
    "reference_omit_prob": 0.15,
    "label_temperature": 0.25,
    "confidence_noise": 1.0,
    "gold": {},
}

POLICIES = ("faithful", "omit", "distort", "hallucinate", "pad", "mixed")
_FLAWS = ("omit", "distort", "hallucinate", "pad")
SUBREDDITS = ("relationships", "relationship_advice", "legaladvice", "personalfinance", "tifu", "Advice")

# Filler = [opener, ] core [tail]. No word here may be a fact word or "the" (tested).
TLDR_FILLER = (
    ("honestly", "so", "anyway", "to be fair", "i guess", "basically", "on top of that"),
    ("i do not know what to do", "this has been going on for weeks", "i feel really stressed about it",
     "my friends say i am overreacting", "we have talked about it twice", "it keeps happening every month",
     "nobody seems to care", "i am not sure who is right", "things got weird after that",
     "it is starting to affect my sleep", "i tried to bring it up calmly", "we used to get along fine",
     "i do not want to start a fight", "money is tight right now", "i have never dealt with anything like this"),
    ("lately", "at this point", "to be honest", "if i am being real", "again"),
)
NEWS_FILLER = (
    ("meanwhile", "separately", "earlier", "in addition", "however"),
    ("officials said on monday", "according to local reports", "police declined to comment",
     "a spokesperson confirmed details", "witnesses described a chaotic scene",
     "investigators are still gathering evidence", "an inquiry is expected later this year",
     "residents expressed concern", "no injuries were reported", "a statement was released late on friday",
     "authorities urged calm", "a court hearing has been scheduled", "lawmakers called for a review"),
    ("this week", "on tuesday", "according to sources", "in a brief statement"),
)

_STREAMS = {"train": 1, "valid": 2, "test": 3, "news": 4, "sft": 5}
_RANGE_KEYS = ("facts_per_post", "filler_per_post", "news_facts", "news_filler")
_COUNT_KEYS = ("n_train_posts", "n_valid_posts", "n_test_posts", "n_news", "pairs_per_post")


# ----------------------------------------------------------------------------- config

def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return (isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
            and bool(np.isfinite(x)))


def resolve_config(cfg: Mapping | None = None) -> dict:
    """SYNTHETIC_DEFAULTS merged with ``cfg``; ValueError names the first bad key."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown synthetic config key (known: {sorted(SYNTHETIC_DEFAULTS)})")
    c = {**SYNTHETIC_DEFAULTS, **cfg}
    if not _is_int(c["seed"]) or c["seed"] < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {c['seed']!r}")
    for key in _COUNT_KEYS:
        if not _is_int(c[key]) or c[key] < 1:
            raise ValueError(f"{key}: must be a positive integer, got {c[key]!r}")
    if not _is_int(c["n_sft_extra_posts"]) or c["n_sft_extra_posts"] < 0:
        raise ValueError(f"n_sft_extra_posts: must be a non-negative integer, got {c['n_sft_extra_posts']!r}")
    for key in _RANGE_KEYS:
        r = c[key]
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(_is_int(v) for v in r)):
            raise ValueError(f"{key}: must be [min, max] integers, got {r!r}")
        lo, hi = r
        floor, ceil = (1, len(SUBJECTS)) if "facts" in key else (0, 50)
        if not floor <= lo <= hi <= ceil:
            raise ValueError(f"{key}: need {floor} <= min <= max <= {ceil}, got {r!r}")
        c[key] = [int(lo), int(hi)]
    if not _is_num(c["reference_omit_prob"]) or not 0 <= c["reference_omit_prob"] <= 1:
        raise ValueError(f"reference_omit_prob: must be in [0, 1], got {c['reference_omit_prob']!r}")
    if not _is_num(c["label_temperature"]) or c["label_temperature"] <= 0:
        raise ValueError(f"label_temperature: must be > 0, got {c['label_temperature']!r}")
    if not _is_num(c["confidence_noise"]) or c["confidence_noise"] < 0:
        raise ValueError(f"confidence_noise: must be >= 0, got {c['confidence_noise']!r}")
    if not isinstance(c["gold"], Mapping):
        raise ValueError(f"gold: must be a dict of gold parameters, got {c['gold']!r}")
    c["gold"] = resolve_gold_params(c["gold"])
    return c


# ----------------------------------------------------------------------------- text

def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]  # much faster than rng.choice on a tuple


def _between(rng: np.random.Generator, lo_hi: Sequence[int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def filler_sentence(rng: np.random.Generator, style: str = "tldr") -> str:
    openers, cores, tails = TLDR_FILLER if style == "tldr" else NEWS_FILLER
    s = _pick(rng, cores)
    if rng.random() < 0.4:
        s = f"{_pick(rng, openers)}, {s}"
    if rng.random() < 0.3:
        s = f"{s} {_pick(rng, tails)}"
    return s


def random_facts(rng: np.random.Generator, n: int) -> list[Fact]:
    """``n`` facts with distinct subjects."""
    subjects = rng.choice(len(SUBJECTS), size=n, replace=False)
    return [(SUBJECTS[s], _pick(rng, VERBS), _pick(rng, OBJECTS)) for s in subjects]


def make_document(rng: np.random.Generator, n_facts: Sequence[int], n_filler: Sequence[int],
                  style: str = "tldr") -> tuple[str, list[Fact]]:
    """A document text and its facts in document order."""
    facts = random_facts(rng, _between(rng, n_facts))
    fillers = [filler_sentence(rng, style) for _ in range(_between(rng, n_filler))]
    items = [render_fact(f) for f in facts] + fillers
    order = rng.permutation(len(items))
    text = " ".join(items[i] + "." for i in order)
    return text, [facts[i] for i in order if i < len(facts)]


def reference_facts(rng: np.random.Generator, facts: list[Fact], omit_prob: float) -> list[Fact]:
    """The facts a human mentions: all, or (with ``omit_prob``, if 2+) all but one."""
    forget = rng.random() < omit_prob  # always drawn, so later draws do not depend on omit_prob
    drop = int(rng.integers(len(facts)))
    return [f for i, f in enumerate(facts) if not (forget and len(facts) > 1 and i == drop)]


def join_facts(facts: Sequence[Fact]) -> str:
    return " and ".join(render_fact(f) for f in facts) + "." if facts else ""


def _other(rng: np.random.Generator, vocab: Sequence[str], current: str) -> str:
    choice = _pick(rng, vocab[:-1])
    return vocab[-1] if choice == current else choice  # uniform over vocab minus current


def candidate_summary(rng: np.random.Generator, doc_facts: Sequence[Fact], policy: str) -> str:
    """A candidate summary of a TL;DR post with facts ``doc_facts`` written by ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown policy {policy!r} (known: {POLICIES})")
    facts = [doc_facts[i] for i in rng.permutation(len(doc_facts))]
    fillers: list[str] = []
    ops = [policy]
    if policy == "mixed":  # 2-4 distinct flaws, applied in a fixed order (omit never drops an addition)
        ops = [_FLAWS[i] for i in sorted(rng.choice(len(_FLAWS), _between(rng, (2, 4)), replace=False))]
    known = set(doc_facts)
    for op in ops:
        if op == "omit" and facts:
            for _ in range(int(rng.integers(1, max(1, len(facts) - 1) + 1))):
                facts.pop(int(rng.integers(len(facts))))
        elif op == "distort" and facts:
            i = int(rng.integers(len(facts)))
            s, v, o = facts[i]
            new = (s, _other(rng, VERBS, v), o) if rng.random() < 0.5 else (s, v, _other(rng, OBJECTS, o))
            if new not in known:  # only possible for a hallucinated fact in "mixed"
                facts[i] = new
        elif op == "hallucinate":
            new = None
            while new is None or new in known or new in facts:
                new = (_pick(rng, SUBJECTS), _pick(rng, VERBS), _pick(rng, OBJECTS))
            facts.insert(int(rng.integers(len(facts) + 1)), new)
        elif op == "pad":
            fillers += [filler_sentence(rng) for _ in range(int(rng.integers(1, 4)))]
    sentences = list(fillers)
    if facts:
        sentences.insert(int(rng.integers(len(sentences) + 1)), join_facts(facts)[:-1])
    if not sentences:  # omitted everything: the summary says nothing useful
        sentences = [filler_sentence(rng)]
    return " ".join(s + "." for s in sentences)


# ----------------------------------------------------------------------------- world

def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], index])


def _post_id(seed: int, stream: str, index: int) -> str:
    n = int(hashlib.sha1(f"post/{seed}/{stream}/{index}".encode()).hexdigest()[:15], 16)
    digits = ""
    for _ in range(8):  # base36, like reddit's "t3_2vwp1w"
        n, d = divmod(n, 36)
        digits += "0123456789abcdefghijklmnopqrstuvwxyz"[d]
    return "t3_" + digits


def _title(rng: np.random.Generator, facts: list[Fact]) -> str:
    subject = _pick(rng, facts)[0]
    return _pick(rng, (f"help with my {subject}", f"advice needed about {subject}",
                       f"not sure what to do about {subject}", filler_sentence(rng)))


def _tldr_post(c: dict, stream: str, i: int) -> tuple[np.random.Generator, dict]:
    rng = _rng(c["seed"], stream, i)
    post, facts = make_document(rng, c["facts_per_post"], c["filler_per_post"], "tldr")
    ref = reference_facts(rng, facts, c["reference_omit_prob"])
    return rng, {"id": _post_id(c["seed"], stream, i), "post": post, "title": _title(rng, facts),
                 "subreddit": _pick(rng, SUBREDDITS), "facts": facts, "reference": join_facts(ref),
                 "omitted": len(ref) < len(facts)}


def _comparisons(c: dict, rng: np.random.Generator, p: dict, split: str) -> tuple[list[dict], list[tuple]]:
    rows, gold = [], []
    doc = set(p["facts"])
    for _ in range(c["pairs_per_post"]):
        for _attempt in range(100):
            pols = [_pick(rng, POLICIES) for _ in range(2)]
            texts = [candidate_summary(rng, p["facts"], pol) for pol in pols]
            if texts[0] != texts[1]:
                break
        r0, r1 = (_reward(doc, t, c["gold"]) for t in texts)
        p0 = preference_probability(r0, r1, c["label_temperature"])
        choice = int(rng.random() >= p0)  # 0 (summaries[0] preferred) with probability p0
        conf = 1 + 8 * abs(2 * p0 - 1) + rng.normal(0.0, c["confidence_noise"])
        rows.append({
            "info": {"id": p["id"], "post": p["post"], "title": p["title"], "subreddit": p["subreddit"],
                     "site": None, "article": None},
            "summaries": [{"text": t, "policy": pol, "note": None} for t, pol in zip(texts, pols)],
            "choice": choice,
            "worker": f"w{int(rng.integers(50)):02d}",
            "batch": f"batch{int(rng.integers(3, 23))}",
            "split": split,
            "extra": {"confidence": int(np.clip(np.rint(conf), 1, 9))},
        })
        gold.append((r0, r1, choice, rows[-1]["extra"]["confidence"], pols))
    return rows, gold


def _news(c: dict, i: int) -> dict:
    rng = _rng(c["seed"], "news", i)
    article, facts = make_document(rng, c["news_facts"], c["news_filler"], "news")
    ref = reference_facts(rng, facts, c["reference_omit_prob"])
    return {"id": hashlib.sha1(f"news/{c['seed']}/{i}".encode()).hexdigest(), "article": article,
            "highlights": "\n".join(render_fact(f) + "." for f in ref)}


def generate_world(cfg: Mapping | None, out_dir: str | Path) -> dict:
    """Write comparisons.jsonl, sft_{train,valid,test}.jsonl and news_test.jsonl; return stats."""
    c = resolve_config(cfg)
    out_dir = Path(out_dir)
    comparisons, gold, sft, refs_omitted = [], [], {}, 0
    for stream, split, n in (("train", "train", c["n_train_posts"]), ("valid", "valid1", c["n_valid_posts"]),
                             ("test", None, c["n_test_posts"])):
        rows = []
        for i in range(n):
            rng, p = _tldr_post(c, stream, i)
            rows.append({"prompt": tldr_prompt(p["subreddit"], p["title"], p["post"]), "label": p["reference"]})
            refs_omitted += p["omitted"]
            if split:
                comp, g = _comparisons(c, rng, p, split)
                comparisons += comp
                gold += g
        sft[stream] = rows
    # SFT-only posts (like the real TL;DR SFT set, larger than the compared posts): train rows
    for i in range(c["n_sft_extra_posts"]):
        _, p = _tldr_post(c, "sft", i)
        sft["train"].append({"prompt": tldr_prompt(p["subreddit"], p["title"], p["post"]), "label": p["reference"]})
        refs_omitted += p["omitted"]
    if len({row["info"]["id"] for row in comparisons}) != c["n_train_posts"] + c["n_valid_posts"]:
        raise RuntimeError("post id collision; change the seed")  # ~1e-7 chance
    news = [_news(c, i) for i in range(c["n_news"])]

    write_jsonl(comparisons, out_dir / "comparisons.jsonl")
    for stream, rows in sft.items():
        write_jsonl(rows, out_dir / f"sft_{stream}.jsonl")
    write_jsonl(news, out_dir / "news_test.jsonl")

    r0, r1, choice, conf = (np.array([g[k] for g in gold]) for k in range(4))
    decided = np.abs(r0 - r1) > 1e-9
    agree = (choice == 0) == (r0 > r1)
    policies = [pol for g in gold for pol in g[4]]
    return {
        "n_posts": {"train": c["n_train_posts"], "valid": c["n_valid_posts"], "test": c["n_test_posts"]},
        "n_news": c["n_news"],
        "n_comparisons": {"train": int(np.sum([r["split"] == "train" for r in comparisons])),
                          "valid1": int(np.sum([r["split"] == "valid1" for r in comparisons]))},
        "mean_confidence": round(float(conf.mean()), 4),
        "tie_fraction": round(float(1 - decided.mean()), 4),
        "label_agreement_with_gold": round(float(agree[decided].mean()), 4) if decided.any() else None,
        "bayes_optimal_accuracy": round(bayes_optimal_accuracy(r0, r1, c["label_temperature"]), 4),
        "reference_omit_fraction": round(refs_omitted / sum(len(v) for v in sft.values()), 4),
        "policy_counts": {pol: policies.count(pol) for pol in POLICIES},
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config-json", default="{}", help="synthetic config as JSON (defaults: SYNTHETIC_DEFAULTS)")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    cfg = json.loads(args.config_json)
    stats = generate_world(cfg, args.out_dir)
    # JSON lines have no metadata slot: the world's provenance and statistics sit beside them
    write_json({**provenance("synthetic", cfg), "stats": stats}, Path(args.out_dir) / "provenance.json")
    print(json.dumps(stats, indent=2, sort_keys=True))
    print(f"synthetic world written to {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
