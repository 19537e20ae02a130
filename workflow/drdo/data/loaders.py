"""Raw rows of the real datasets' schemas -> normalised DataFrames.

Three sources, each read from a local ``.jsonl``/``.json``/``.parquet`` file or through
``datasets`` from the Hugging Face hub (``{"id": name, "split": split, "revision": ...}``,
see :func:`_hf_rows`):

* ``openai/summarize_from_feedback`` ("comparisons")   -> :func:`load_comparisons`
* ``CarperAI/openai_summarize_tldr``                     -> :func:`load_sft`
* ``abisee/cnn_dailymail``                               -> :func:`load_news`

and, for ``task: ultrafeedback``, two more:

* ``argilla/ultrafeedback-binarized-preferences-cleaned`` -> :func:`load_preferences`
* ``tatsu-lab/alpaca_eval`` (config "alpaca_eval")        -> :func:`load_alpaca_eval`

Every loader returns ``(df, drops)``: ``drops`` maps each of the loader's drop reasons to a
count (zeros included, so reports have a fixed shape). Each row is parsed by a small
function that returns the normalised record or raises :class:`Drop`; :func:`_load` does
the iteration, de-duplication, counting and logging for all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Union

import pandas as pd
import pyarrow.parquet as pq

from drdo.io import read_jsonl
from drdo.prompts import news_prompt, tldr_prompt

log = logging.getLogger("drdo.data")

Source = Union[str, os.PathLike, dict]

COMPARISON_COLUMNS = ["pair_id", "post_id", "split", "prompt", "document", "chosen", "rejected",
                      "chosen_policy", "rejected_policy", "confidence"]
SFT_COLUMNS = ["prompt", "response", "document"]
NEWS_COLUMNS = ["prompt_id", "prompt", "document", "reference"]
EVAL_COLUMNS = ["eval_set", "prompt_id", "prompt", "document", "reference"]

COMPARISON_REASONS = ("invalid_json", "missing_field", "empty_response", "identical_responses",
                      "bad_confidence", "duplicate_pair")
SFT_REASONS = ("invalid_json", "missing_field", "empty_response", "duplicate")
NEWS_REASONS = SFT_REASONS
# not_single_turn: a conversation that is not exactly [user, assistant] (dropped, not truncated to
# its last turn: the earlier turns would be context the prompt column does not hold);
# prompt_mismatch: the user turn is not the row's prompt; bad_rating: a rating that is not a
# finite number; not_preferred: chosen-rating <= rejected-rating (no preference to learn).
PREFERENCE_REASONS = ("invalid_json", "missing_field", "not_single_turn", "prompt_mismatch", "empty_response",
                      "identical_responses", "bad_rating", "not_preferred", "duplicate_pair")
ALPACA_REASONS = SFT_REASONS
HOLDOUT_PARTS = ("train", "validation", "test")

# valid1 (TL;DR) and valid2 (TL;DR + CNN/DM) are both held-out comparisons.
_SPLITS = {"train": "train", "valid1": "validation", "valid2": "validation"}
# Greedy: Reddit posts often contain their own "TL;DR:", the template's is the last one.
_POST_RE = re.compile(r"POST: (.*)\nTL;DR:", re.DOTALL)


class Drop(Exception):
    """Raised by a row parser: the row is dropped and counted under ``reason``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def short_hash(*parts: str) -> str:
    """First 16 hex digits of sha256 over the parts joined by NUL."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- raw rows

def _source_label(source: Source) -> str:
    if isinstance(source, dict):
        cfg = f"[{source['config']}]" if source.get("config") else ""
        rev = f"@{source['revision']}" if source.get("revision") else ""
        return f"hf:{source.get('id')}{cfg}{rev}:{source.get('split')}"
    return str(source)


HUB_TIMEOUT_S = 10.0  # one look-up per dataset; huggingface_hub's own retries take ~25 s


def _check_hub(name: str, revision: str | None) -> None:
    """Fail fast, naming the dataset, if the hub cannot serve ``name`` at ``revision``.

    ``datasets`` retries an unreachable hub for ~25 s per file before a generic error;
    one short request tells an unreachable hub, a wrong name and a wrong revision apart.
    """
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return  # datasets reads its cache (or fails at once, naming the dataset)
    try:
        HfApi().dataset_info(name, revision=revision, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # network errors (httpx), RepositoryNotFound, RevisionNotFound
        raise RuntimeError(f"Hugging Face dataset {name!r} (revision {revision!r}) is not available from "
                           f"{constants.ENDPOINT}: {type(e).__name__}: {e}. Check the network, HF_ENDPOINT "
                           "and the config's data.hub entry, or set HF_HUB_OFFLINE=1 to read a cached "
                           "copy") from None


def _hf_rows(source: dict) -> Iterator[tuple[int, Any]]:
    """Rows of a dataset through ``datasets.load_dataset``.

    ``source``: ``id`` (a hub id, or a local directory laid out like the hub repo),
    ``split`` (``"train+validation"`` concatenates), optional ``config``, ``revision`` (a
    commit, tag or branch such as ``refs/convert/parquet``), ``data_files`` (paths or
    globs inside the repo: how a loading-script dataset's Parquet conversion is read) and
    ``cache_dir``.
    """
    name, split = source.get("id"), source.get("split")
    if not name or not split:
        raise ValueError(f"hub source needs 'id' and 'split': {source!r}")
    import datasets

    local = Path(name).is_dir()
    if not local:
        _check_hub(name, source.get("revision"))
    kwargs = {k: source[k] for k in ("data_files", "cache_dir") if source.get(k)}
    if source.get("revision") and not local:
        kwargs["revision"] = source["revision"]
    try:
        ds = datasets.load_dataset(name, source.get("config"), split=split, **kwargs)
    except Exception as e:  # offline hub, unknown config or split, bad files: all name the dataset
        cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
        raise RuntimeError(f"could not load dataset {_source_label(source)}: {type(e).__name__}: {e}{cause}") from None
    for i, row in enumerate(ds, start=1):
        yield i, row


def _file_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or record number, parsed row or None) for a local file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
        return
    if suffix == ".json":
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError:
            rows = None  # many ".json" dumps are JSON lines
        if rows is not None:
            if not isinstance(rows, list):
                raise ValueError(f"{path}: expected a JSON list of rows or JSON lines")
            yield from enumerate(rows, start=1)
            return
    elif suffix != ".jsonl":
        raise ValueError(f"{path}: unsupported file type {suffix!r} (.jsonl, .json, .parquet)")
    for lineno, row, _raw in read_jsonl(path):
        yield lineno, row


def iter_rows(source: Source) -> Iterator[tuple[int, Any]]:
    """Yield (line/record number, row or None if the line is not valid JSON)."""
    if isinstance(source, dict):
        return _hf_rows(source)
    return _file_rows(Path(source))


# ---------------------------------------------------------------------------- row checks

def _get(obj: Any, key: str, typ: type = str) -> Any:
    """``obj[key]`` if present, non-null and of type ``typ``; else drop as missing_field."""
    val = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(val, typ):
        raise Drop("missing_field")
    return val


def _opt_str(obj: dict, key: str) -> str:
    """Optional string field: null/absent -> ""; another type -> missing_field."""
    val = obj.get(key)
    if val is None:
        return ""
    if not isinstance(val, str):
        raise Drop("missing_field")
    return val


def _text(val: str) -> str:
    val = val.strip()
    if not val:
        raise Drop("empty_response")
    return val


def _load(source: Source, parse: Callable[[Any], dict], key: Callable[[dict], Hashable],
          reasons: tuple[str, ...], dup_reason: str, columns: list[str]
          ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Parse every row of ``source``; count, log and skip the ones that fail."""
    label = _source_label(source)
    counts, first, seen, out = Counter(), {}, set(), []
    for lineno, row in iter_rows(source):
        try:
            if row is None:
                raise Drop("invalid_json")
            rec = parse(row)
            k = key(rec)
            if k in seen:
                raise Drop(dup_reason)
            seen.add(k)
        except Drop as d:
            counts[d.reason] += 1
            first.setdefault(d.reason, lineno)
            continue
        out.append(rec)
    for reason in reasons:
        if counts[reason]:
            log.warning("%s: dropped %d row(s): %s (first at line %d)",
                        label, counts[reason], reason, first[reason])
    if not out:
        raise ValueError(f"no valid rows in {label} (drops: {dict(counts)})")
    log.info("%s: kept %d row(s)", label, len(out))
    return pd.DataFrame(out, columns=columns), {r: counts[r] for r in reasons}


# ---------------------------------------------------------------------------- comparisons

def _confidence(row: dict) -> int:
    extra = row.get("extra")
    c = extra.get("confidence") if isinstance(extra, dict) else None
    # JSON/Arrow may hand integers over as floats (7.0); strings and bools are not ratings.
    if (not isinstance(c, (int, float)) or isinstance(c, bool) or not float(c).is_integer()
            or not 1 <= c <= 9):
        raise Drop("bad_confidence")
    return int(c)


def _parse_comparison(row: Any) -> dict:
    info = _get(row, "info", dict)
    summaries = _get(row, "summaries", list)
    choice = row.get("choice")
    if len(summaries) != 2 or type(choice) is not int or choice not in (0, 1):
        raise Drop("missing_field")
    split = _SPLITS.get(_get(row, "split"))
    if split is None:
        raise Drop("missing_field")
    post_id = _get(info, "id")
    # CNN/DM rows (valid2) have post=null and the text in article.
    post = info.get("post") or info.get("article")
    if not isinstance(post, str) or not post.strip():
        raise Drop("missing_field")
    title, subreddit = _opt_str(info, "title"), _opt_str(info, "subreddit")
    texts = [_get(s, "text") for s in summaries]
    policies = [_opt_str(s, "policy") for s in summaries]
    texts = [_text(t) for t in texts]
    if texts[0] == texts[1]:
        raise Drop("identical_responses")
    confidence = _confidence(row)
    chosen, rejected = texts[choice], texts[1 - choice]
    return {
        "pair_id": short_hash(post_id, chosen, rejected),
        "post_id": post_id,
        "split": split,
        "prompt": tldr_prompt(subreddit, title, post),
        "document": post,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_policy": policies[choice],
        "rejected_policy": policies[1 - choice],
        "confidence": confidence,
    }


def load_comparisons(source: Source) -> tuple[pd.DataFrame, dict[str, int]]:
    """Human preference pairs (``openai/summarize_from_feedback``, config "comparisons").

    Columns: ``COMPARISON_COLUMNS``; ``split`` is "train" or "validation" (valid1 + valid2).
    Drop reasons: ``COMPARISON_REASONS``. Raises ``ValueError`` if no row survives.
    """
    df, drops = _load(source, _parse_comparison, lambda r: r["pair_id"], COMPARISON_REASONS,
                      "duplicate_pair", COMPARISON_COLUMNS)
    return df.astype({"confidence": "int64"}), drops


# ---------------------------------------------------------------------------- SFT / news

def _parse_sft(row: Any) -> dict:
    # Some dumps end the prompt with "TL;DR: "; response_text() adds the one space itself.
    prompt = _get(row, "prompt").rstrip()
    if not prompt:
        raise Drop("missing_field")
    response = _text(_get(row, "label"))
    m = _POST_RE.search(prompt)
    return {"prompt": prompt, "response": response, "document": m.group(1) if m else prompt}


def load_sft(source: Source) -> tuple[pd.DataFrame, dict[str, int]]:
    """SFT demonstrations (``CarperAI/openai_summarize_tldr``): columns ``SFT_COLUMNS``."""
    return _load(source, _parse_sft, lambda r: (r["prompt"], r["response"]), SFT_REASONS,
                 "duplicate", SFT_COLUMNS)


def _parse_news(row: Any) -> dict:
    prompt_id, article = _get(row, "id"), _get(row, "article")
    if not article.strip():
        raise Drop("missing_field")
    reference = _text(_get(row, "highlights").replace("\n", " "))
    return {"prompt_id": prompt_id, "prompt": news_prompt(article), "document": article,
            "reference": reference}


def load_news(source: Source) -> tuple[pd.DataFrame, dict[str, int]]:
    """News articles (``abisee/cnn_dailymail``): columns ``NEWS_COLUMNS``, one row per id."""
    return _load(source, _parse_news, lambda r: r["prompt_id"], NEWS_REASONS, "duplicate",
                 NEWS_COLUMNS)


# ---------------------------------------------------------------------------- eval prompts

def eval_prompts(sft_test_df: pd.DataFrame, news_df: pd.DataFrame, n_tldr: int, n_news: int,
                 seed: int) -> pd.DataFrame:
    """Seeded sample of ``n_tldr`` TL;DR and ``n_news`` news prompts (all if fewer exist).

    Columns ``EVAL_COLUMNS``; TL;DR rows are de-duplicated by prompt first (the SFT test set
    can hold several labels per post) and get ``prompt_id`` = :func:`short_hash` (prompt).
    """
    if n_tldr < 0 or n_news < 0:
        raise ValueError(f"sample sizes must be >= 0, got n_tldr={n_tldr}, n_news={n_news}")
    tldr = sft_test_df.drop_duplicates("prompt")
    tldr = tldr.sample(n=min(n_tldr, len(tldr)), random_state=seed)
    tldr = pd.DataFrame({"eval_set": "tldr", "prompt_id": tldr["prompt"].map(short_hash),
                         "prompt": tldr["prompt"], "document": tldr["document"],
                         "reference": tldr["response"]})
    news = news_df.sample(n=min(n_news, len(news_df)), random_state=seed)
    news = news.assign(eval_set="news")
    return pd.concat([tldr[EVAL_COLUMNS], news[EVAL_COLUMNS]], ignore_index=True)


# ---------------------------------------------------------------------------- UltraFeedback

def holdout_part(prompt: str, holdout: dict) -> str:
    """"train", "validation" or "test" for a prompt: a seeded hash of the prompt text, so every
    row of one prompt lands in the same part and the carve does not depend on row order.
    ``holdout``: ``{"validation": fraction, "test": fraction, "seed": int}``."""
    u = int(hashlib.sha256(f"{holdout['seed']}\x00{prompt}".encode()).hexdigest()[:15], 16) / 16 ** 15
    if u < holdout["test"]:
        return "test"
    return "validation" if u < holdout["test"] + holdout["validation"] else "train"


def _reply(messages: Any, prompt: str) -> str:
    """The assistant's reply of a single-turn conversation whose user turn is ``prompt``."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise Drop("missing_field")
    if [m.get("role") for m in messages] != ["user", "assistant"]:
        raise Drop("not_single_turn")
    user, reply = (_get(m, "content") for m in messages)
    if user.strip() != prompt:
        raise Drop("prompt_mismatch")
    return _text(reply)


def _rating(row: dict, key: str) -> float:
    val = row.get(key)
    if not isinstance(val, (int, float)) or isinstance(val, bool) or val != val or abs(val) == float("inf"):
        raise Drop("bad_rating")
    return float(val)


def _parse_preference(row: Any, holdout: dict) -> dict:
    prompt = _get(row, "prompt").strip()
    if not prompt:
        raise Drop("missing_field")
    chosen = _reply(_get(row, "chosen", list), prompt)
    rejected = _reply(_get(row, "rejected", list), prompt)
    if chosen == rejected:
        raise Drop("identical_responses")
    margin = _rating(row, "chosen-rating") - _rating(row, "rejected-rating")
    if margin <= 0:
        raise Drop("not_preferred")
    prompt_id = short_hash(prompt)
    return {
        "pair_id": short_hash(prompt_id, chosen, rejected),
        "post_id": prompt_id,
        "split": holdout_part(prompt, holdout),
        "prompt": prompt,
        "document": prompt,  # an over-long prompt keeps the instruction's head (batching._cut)
        "chosen": chosen,
        "rejected": rejected,
        "chosen_policy": _opt_str(row, "chosen-model"),
        "rejected_policy": _opt_str(row, "rejected-model"),
        "confidence": margin,
    }


def load_preferences(source: Source, holdout: dict) -> tuple[pd.DataFrame, dict[str, int]]:
    """UltraFeedback preference pairs (``argilla/ultrafeedback-binarized-preferences-cleaned``):
    ``prompt`` and ``chosen`` / ``rejected`` as [user, assistant] messages with their ratings.

    Columns ``COMPARISON_COLUMNS``; ``split`` is "train", "validation" or "test"
    (:func:`holdout_part`: the dataset has only a train split); ``confidence`` is the rating
    margin chosen-rating - rejected-rating (> 0, a float: UltraFeedback has no labeler
    confidence). Drop reasons: ``PREFERENCE_REASONS``.
    """
    for key in ("validation", "test"):
        if not 0 <= holdout[key] < 1:
            raise ValueError(f"data.holdout.{key} must be in [0, 1), got {holdout[key]}")
    if holdout["validation"] + holdout["test"] >= 1:
        raise ValueError("data.holdout: validation + test must leave prompts to train on")
    df, drops = _load(source, partial(_parse_preference, holdout=holdout), lambda r: r["pair_id"],
                      PREFERENCE_REASONS, "duplicate_pair", COMPARISON_COLUMNS)
    return df.astype({"confidence": "float64"}), drops


def _parse_alpaca(row: Any) -> dict:
    instruction = _get(row, "instruction").strip()
    if not instruction:
        raise Drop("missing_field")
    return {"prompt_id": short_hash(instruction), "prompt": instruction, "document": instruction,
            "reference": _text(_get(row, "output"))}


def load_alpaca_eval(source: Source) -> tuple[pd.DataFrame, dict[str, int]]:
    """AlpacaEval instructions (``tatsu-lab/alpaca_eval``, config "alpaca_eval", split "eval":
    instruction, output, generator, dataset). Columns ``NEWS_COLUMNS``; ``reference`` is the
    dataset's ``output`` (the reference model's answer), one row per instruction."""
    return _load(source, _parse_alpaca, lambda r: r["prompt_id"], ALPACA_REASONS, "duplicate", NEWS_COLUMNS)


def sample_eval_set(df: pd.DataFrame, eval_set: str, n: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``n`` rows (all if fewer) of a frame with ``NEWS_COLUMNS``, as ``EVAL_COLUMNS``."""
    if n < 0:
        raise ValueError(f"sample size for {eval_set} must be >= 0, got {n}")
    return df.sample(n=min(n, len(df)), random_state=seed).assign(eval_set=eval_set)[EVAL_COLUMNS]


def heldout_prompts(pairs: pd.DataFrame) -> pd.DataFrame:
    """One eval row per held-out ("test") prompt, its reference the chosen response of its
    first pair (the paper evaluates on UltraFeedback's test prompts; ours are carved out)."""
    test = pairs[pairs["split"] == "test"].drop_duplicates("post_id")
    return pd.DataFrame({"prompt_id": test["post_id"], "prompt": test["prompt"], "document": test["document"],
                         "reference": test["chosen"]}, columns=NEWS_COLUMNS).reset_index(drop=True)
