"""Stage entry points (python -m drdo ...) on fixture files in the real datasets' schemas."""

import json
from pathlib import Path

import pandas as pd
import pytest

from drdo import io
from drdo.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def test_normalise_on_fixtures_records_drops(tmp_path):
    out = {k: tmp_path / f"{k}.parquet" for k in ("pairs", "sft", "eval")}
    main(["normalise", "--params", json.dumps({"n_tldr": 2, "n_news": 2, "seed": 0}),
          "--comparisons", str(FIXTURES / "comparisons.jsonl"), "--sft-train", str(FIXTURES / "sft.jsonl"),
          "--sft-test", str(FIXTURES / "sft.jsonl"), "--news", str(FIXTURES / "news.jsonl"),
          "--out-pairs", str(out["pairs"]), "--out-sft", str(out["sft"]), "--out-eval", str(out["eval"])])
    pairs = io.read_parquet(out["pairs"])
    assert len(pairs) == 5 and pairs["pair_id"].is_unique
    drops = io.read_provenance(out["pairs"])["drops"]
    assert drops == {"invalid_json": 1, "missing_field": 2, "empty_response": 1, "identical_responses": 1,
                     "bad_confidence": 2, "duplicate_pair": 1}
    evals = io.read_parquet(out["eval"])
    assert sorted(evals["eval_set"].unique()) == ["news", "tldr"] and len(evals) == 4


def test_failed_stage_leaves_no_output(tmp_path):
    scores = pd.DataFrame({"policy": ["drdo"], "split": ["all"], "eval_set": ["tldr"], "prompt_id": ["p"],
                           "temperature": [0.7], "oracle": [1.0], "gold": [0.5]})
    io.write_parquet(scores, tmp_path / "drdo.parquet", {})
    out = tmp_path / "winrates.csv"
    params = {"splits": ["all"], "methods": ["drdo", "dpo"], "scorers": ["oracle"], "n_boot": 10, "seed": 0}
    with pytest.raises(ValueError, match="no common prompts"):
        main(["winrates", "--params", json.dumps(params), "--scores", str(tmp_path / "drdo.parquet"),
              "--out", str(out)])
    assert not out.exists() and not io.provenance_sidecar(out).exists()
