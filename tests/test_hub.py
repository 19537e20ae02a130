"""data.source: hub, through the real `datasets` code on local mirrors of the hub repos.

Each fixture directory is laid out like the hub repository (or revision) it stands for, and
is passed to the loaders as the dataset id: `datasets.load_dataset` resolves it exactly as it
resolves the hub's files (data_files globs, README configs, split names), only from disk.
Nothing here contacts a network address other than 127.0.0.1.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drdo import io
from drdo.cli import main
from drdo.data.loaders import load_comparisons, load_news, load_sft

FIX = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]

# openai/summarize_from_feedback is a loading-script dataset; the hub serves its Parquet
# conversion on the `refs/convert/parquet` revision as <config>/<split>/NNNN.parquet.
COMPARISONS = {"id": "openai/summarize_from_feedback", "split": "train+validation",
               "revision": "refs/convert/parquet",
               "data_files": {"train": "comparisons/train/*.parquet",
                              "validation": "comparisons/validation/*.parquet"}}
SFT_TRAIN = {"id": "CarperAI/openai_summarize_tldr", "split": "train", "revision": "main"}
SFT_TEST = {**SFT_TRAIN, "split": "test"}
NEWS = {"id": "abisee/cnn_dailymail", "config": "3.0.0", "split": "test", "revision": "main"}

CNN_README = """---
configs:
- config_name: 1.0.0
  data_files:
  - split: test
    path: 1.0.0/test-*
- config_name: 3.0.0
  data_files:
  - split: train
    path: 3.0.0/train-*
  - split: test
    path: 3.0.0/test-*
---
"""


def _valid_comparison_rows():
    return [json.loads(line) for line in (FIX / "comparisons.jsonl").read_text().splitlines()[:5]]


def _sft_rows(tag):
    return [{"prompt": f"SUBREDDIT: r/test\nTITLE: {tag} {i}\nPOST: Post {tag} {i}.\nTL;DR:",
             "label": f" Summary {tag} {i}."} for i in range(3)]


def _news_rows(version):
    return [{"article": f"(CNN) Article {i} of {version}.", "highlights": f"Highlight {i} .\nMore .",
             "id": f"{version}-{i}"} for i in range(4)]


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    # summarize_from_feedback @ refs/convert/parquet
    cmp = root / "summarize_from_feedback"
    rows = _valid_comparison_rows()
    schema = pa.Table.from_pylist(rows).schema  # one schema for every file, as the converter writes
    for split, keep in (("train", {"train"}), ("validation", {"valid1", "valid2"})):
        d = cmp / "comparisons" / split
        d.mkdir(parents=True)
        part = [r for r in rows if r["split"] in keep]
        pq.write_table(pa.Table.from_pylist(part, schema=schema), d / "0000.parquet")
    # CarperAI/openai_summarize_tldr: data/<split>-NNNNN-of-NNNNN.parquet, splits from the names
    tldr = root / "openai_summarize_tldr" / "data"
    tldr.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        pq.write_table(pa.Table.from_pylist(_sft_rows(split)), tldr / f"{split}-00000-of-00001.parquet")
    # abisee/cnn_dailymail: one folder per config, declared in the README's YAML header
    cnn = root / "cnn_dailymail"
    for version in ("1.0.0", "3.0.0"):
        (cnn / version).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(_news_rows(version)), cnn / version / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(_news_rows("3.0.0-train")), cnn / "3.0.0" / "train-00000-of-00001.parquet")
    (cnn / "README.md").write_text(CNN_README)
    specs = {"comparisons": {**COMPARISONS, "id": str(cmp)}, "sft_train": {**SFT_TRAIN, "id": str(tldr.parent)},
             "sft_test": {**SFT_TEST, "id": str(tldr.parent)}, "news": {**NEWS, "id": str(cnn)}}
    cache = root / "cache"
    return {k: {**v, "cache_dir": str(cache)} for k, v in specs.items()}


def test_comparisons_from_the_parquet_conversion(mirrors):
    df, drops = load_comparisons(mirrors["comparisons"])
    expected, _ = load_comparisons(FIX / "comparisons.jsonl")
    key = ["pair_id"]
    pd.testing.assert_frame_equal(df.sort_values(key).reset_index(drop=True),
                                  expected.sort_values(key).reset_index(drop=True))
    assert sum(drops.values()) == 0
    assert set(df["split"]) == {"train", "validation"}
    # one split only: the validation file's rows (valid1 + valid2)
    val, _ = load_comparisons({**mirrors["comparisons"], "split": "validation"})
    assert set(val["post_id"]) == {"t3_c3", "cnn-d4"}


def test_sft_splits_and_cnn_config(mirrors):
    train, _ = load_sft(mirrors["sft_train"])
    test, _ = load_sft(mirrors["sft_test"])
    assert train["response"].tolist() == [f"Summary train {i}." for i in range(3)]
    assert test["document"].tolist() == [f"Post test {i}." for i in range(3)]
    news, _ = load_news(mirrors["news"])
    assert news["prompt_id"].tolist() == [f"3.0.0-{i}" for i in range(4)]  # config 3.0.0, split test
    assert news["reference"][0] == "Highlight 0 . More ."
    old, _ = load_news({**mirrors["news"], "config": "1.0.0"})
    assert old["prompt_id"].tolist() == [f"1.0.0-{i}" for i in range(4)]


def test_unknown_split_names_the_dataset(mirrors):
    with pytest.raises(RuntimeError, match="cnn_dailymail.*3.0.0.*validation"):
        load_news({**mirrors["news"], "split": "validation"})


def test_normalise_stage_reads_the_hub_specs(mirrors, tmp_path):
    out = {k: tmp_path / f"{k}.parquet" for k in ("pairs", "sft", "eval")}
    params = {"n_tldr": 2, "n_news": 3, "seed": 0, "hub": mirrors}
    main(["normalise", "--params", json.dumps({"hub": mirrors}), "--out-pairs", str(out["pairs"]),
          "--out-sft", str(out["sft"])])
    main(["eval-prompts", "--params", json.dumps(params), "--out", str(out["eval"])])
    assert len(io.read_parquet(out["pairs"])) == 5
    assert len(io.read_parquet(out["sft"])) == 3
    evals = io.read_parquet(out["eval"])
    assert evals["eval_set"].value_counts().to_dict() == {"news": 3, "tldr": 2}
    prov = io.read_provenance(out["eval"])
    assert prov["config"]["hub"]["news"]["revision"] == "main" and prov["inputs"] == {}
    assert io.read_provenance(out["pairs"])["inputs"] == {}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"},
                                 {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:{port}"}],
                         ids=["offline", "unreachable"])
def test_unreachable_hub_fails_fast_naming_the_dataset(env, tmp_path):
    env = {k: v.format(port=_closed_port()) for k, v in env.items()}
    code = ("from drdo.data.loaders import load_comparisons\n"
            f"load_comparisons({COMPARISONS!r})\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "workflow"),
                               "HF_HOME": str(tmp_path / "hf"), **env})
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError") and "openai/summarize_from_feedback" in last, proc.stderr[-2000:]
    assert "Retrying" not in proc.stderr
    assert elapsed < 30, f"took {elapsed:.0f} s"  # datasets' own retries take ~25 s per file
