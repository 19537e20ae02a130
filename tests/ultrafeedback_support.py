"""UltraFeedback- and AlpacaEval-schema fixtures in the hub's own Parquet layouts.

The rows come from a small synthetic world (drdo.synthetic) turned into chat messages, so a
policy trained on them has something to learn; a few malformed rows are added, one per drop
reason, with the reason they must be dropped for.

* ``argilla/ultrafeedback-binarized-preferences-cleaned`` (revision main): ``data/train-*.parquet``,
  columns source, prompt, chosen / rejected ([{content, role}] user then assistant),
  chosen-rating / rejected-rating, chosen-model / rejected-model.
* ``tatsu-lab/alpaca_eval`` is a loading-script dataset; its Parquet conversion
  (revision ``refs/convert/parquet``) holds ``alpaca_eval/eval/0000.parquet`` with
  instruction, output, generator, dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from drdo import synthetic

UF_INSTRUCTION = "Summarize the key facts of this forum post in one sentence.\n\n"
ALPACA_INSTRUCTION = "Summarize this news article in one sentence.\n\n"
UF_SPEC = {"id": "argilla/ultrafeedback-binarized-preferences-cleaned", "revision": "main", "split": "train"}
# the config ("alpaca_eval") is the folder in data_files: the conversion branch declares no configs
ALPACA_SPEC = {"id": "tatsu-lab/alpaca_eval", "revision": "refs/convert/parquet", "split": "eval",
               "data_files": {"eval": "alpaca_eval/eval/*.parquet"}}


def _messages(prompt, reply):
    return [{"content": prompt, "role": "user"}, {"content": reply, "role": "assistant"}]


def preference_row(prompt, chosen, rejected, chosen_rating, rejected_rating, models=("gpt-4", "alpaca-7b")):
    return {"source": "synthetic", "prompt": prompt, "chosen": _messages(prompt, chosen),
            "chosen-rating": chosen_rating, "chosen-model": models[0], "rejected": _messages(prompt, rejected),
            "rejected-rating": rejected_rating, "rejected-model": models[1]}


def world_rows(root: Path, **world) -> tuple[list[dict], list[dict]]:
    """(UltraFeedback rows, AlpacaEval rows) from a synthetic world written under ``root``.

    A comparison becomes a pair whose chosen response is the labeler's choice, rated 5.0, and
    whose rejected one is rated 5.0 - confidence / 2 (so the rating margin is the confidence / 2);
    a news article becomes an AlpacaEval instruction whose ``output`` is its highlights.
    """
    synthetic.generate_world(world, root)
    uf = []
    for line in (root / "comparisons.jsonl").read_text().splitlines():
        r = json.loads(line)
        s, c = r["summaries"], r["choice"]
        uf.append(preference_row(UF_INSTRUCTION + r["info"]["post"], s[c]["text"].strip(), s[1 - c]["text"].strip(),
                                 5.0, 5.0 - r["extra"]["confidence"] / 2, (s[c]["policy"], s[1 - c]["policy"])))
    alpaca = [{"instruction": ALPACA_INSTRUCTION + n["article"], "output": n["highlights"].replace("\n", " "),
               "generator": "text_davinci_003", "dataset": "synthetic_news"}
              for n in map(json.loads, (root / "news_test.jsonl").read_text().splitlines())]
    return uf, alpaca


def bad_preference_rows(good: dict) -> dict[str, dict]:
    """One malformed row per drop reason, made from a good row."""
    p = "Write a haiku about rain."
    multi = preference_row(p, "Rain taps on the roof.", "Rain.", 5.0, 2.0)
    multi["chosen"] = multi["chosen"] + _messages("Another one?", "Clouds gather, then go.")
    mismatch = preference_row(p, "Rain taps on the roof.", "Rain.", 5.0, 2.0)
    mismatch["rejected"][0]["content"] = "Write a haiku about snow."
    return {
        "not_single_turn": multi,
        "prompt_mismatch": mismatch,
        "not_preferred": preference_row(p + " Please.", "Drops fall.", "Rain is wet.", 3.0, 3.0),
        "bad_rating": preference_row(p + " Now.", "Drops fall.", "Rain is wet.", None, 3.0),
        "identical_responses": preference_row(p + " Again.", "Drops fall.", "Drops fall.", 5.0, 1.0),
        "empty_response": preference_row(p + " Short.", "   ", "Rain is wet.", 5.0, 1.0),
        "missing_field": {**preference_row(p, "Drops fall.", "Rain is wet.", 5.0, 1.0), "prompt": None},
        "duplicate_pair": dict(good),
    }


def bad_alpaca_rows(good: dict) -> dict[str, dict]:
    return {"duplicate": dict(good), "empty_response": {**good, "instruction": "Say nothing.", "output": " "},
            "missing_field": {**good, "instruction": None}}


def write_hub_layouts(root: Path, uf_rows: list[dict], alpaca_rows: list[dict]) -> dict:
    """Local directories laid out like the two hub repositories; returns their data.hub entries."""
    uf_dir = root / "ultrafeedback-binarized-preferences-cleaned"
    (uf_dir / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(uf_rows), uf_dir / "data" / "train-00000-of-00001.parquet")
    al_dir = root / "alpaca_eval"
    (al_dir / "alpaca_eval" / "eval").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(alpaca_rows), al_dir / "alpaca_eval" / "eval" / "0000.parquet")
    cache = str(root / "cache")
    return {"preferences": {**UF_SPEC, "id": str(uf_dir), "cache_dir": cache},
            "alpaca_eval": {**ALPACA_SPEC, "id": str(al_dir), "cache_dir": cache}}
