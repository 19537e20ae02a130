"""Stage entry points (python -m drdo ...) on fixture files in the real datasets' schemas."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drdo import io
from drdo.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def test_normalise_on_fixtures_records_drops(tmp_path):
    out = {k: tmp_path / f"{k}.parquet" for k in ("pairs", "sft", "eval")}
    main(["normalise", "--params", "{}", "--comparisons", str(FIXTURES / "comparisons.jsonl"),
          "--sft-train", str(FIXTURES / "sft.jsonl"), "--out-pairs", str(out["pairs"]), "--out-sft", str(out["sft"])])
    params = {"n_tldr": 2, "n_news": 2, "seed": 0}
    main(["eval-prompts", "--params", json.dumps(params), "--sft-test", str(FIXTURES / "sft.jsonl"),
          "--news", str(FIXTURES / "news.jsonl"), "--out", str(out["eval"])])
    pairs = io.read_parquet(out["pairs"])
    assert len(pairs) == 5 and pairs["pair_id"].is_unique
    drops = io.read_provenance(out["pairs"])["drops"]
    assert drops == {"invalid_json": 1, "missing_field": 2, "empty_response": 1, "identical_responses": 1,
                     "bad_confidence": 2, "duplicate_pair": 1}
    evals = io.read_parquet(out["eval"])
    assert sorted(evals["eval_set"].unique()) == ["news", "tldr"] and len(evals) == 4
    # each output records the stage that made it, its own params and the files it read
    prov = {k: io.read_provenance(out[k]) for k in ("pairs", "eval")}
    assert prov["pairs"]["stage"] == "normalise" and set(prov["pairs"]["inputs"]) == {"comparisons", "sft_train"}
    assert prov["pairs"]["config"] == {}
    assert prov["eval"]["stage"] == "eval_prompts" and set(prov["eval"]["inputs"]) == {"sft_test", "news"}
    assert prov["eval"]["config"] == params


def test_failed_stage_leaves_no_output(tmp_path):
    scores = pd.DataFrame({"policy": ["drdo"], "split": ["all"], "eval_set": ["tldr"], "prompt_id": ["p"],
                           "temperature": [0.7], "response": ["r"], "finished": [True], "too_long": [False],
                           "oracle": [1.0], "gold": [0.5]})
    io.write_parquet(scores, tmp_path / "drdo.parquet", {})
    out = tmp_path / "winrates.csv"
    params = {"splits": ["all"], "methods": ["drdo", "dpo"], "scorers": ["oracle"], "unfinished": "as_scored"}
    with pytest.raises(ValueError, match="no common prompts"):
        main(["winrates", "--params", json.dumps(params), "--scores", str(tmp_path / "drdo.parquet"),
              "--out", str(out)])
    assert not out.exists() and not io.provenance_sidecar(out).exists()


def test_a_write_that_fails_midway_leaves_no_output(tmp_path, monkeypatch):
    """The stage fails while writing its CSV, the header already out (a full disk): nothing at
    the output path, no provenance, no temporary left beside it."""
    policies = {"drdo": "all", "dpo": "all", "sft": "-", "reference": "-"}
    for i, (policy, split) in enumerate(policies.items()):
        io.write_parquet(pd.DataFrame({"policy": [policy], "split": [split], "eval_set": ["tldr"], "prompt_id": ["p"],
                                       "temperature": [np.nan if policy == "reference" else 0.7],
                                       "response": [policy], "finished": [True],
                                       "too_long": [False], "oracle": [float(i)], "gold": [0.5]}),
                         tmp_path / f"{policy}.parquet", {})
    to_csv = pd.DataFrame.to_csv

    def header_then_fail(self, path, **kwargs):
        to_csv(self.head(0), path, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", header_then_fail)
    out = tmp_path / "winrates.csv"
    params = {"splits": ["all"], "methods": ["drdo", "dpo"], "scorers": ["oracle"], "unfinished": "as_scored"}
    with pytest.raises(OSError, match="No space left"):
        main(["winrates", "--params", json.dumps(params), "--scores",
              *(str(tmp_path / f"{policy}.parquet") for policy in policies), "--out", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{policy}.parquet" for policy in policies)


def test_gold_table_and_gold_teacher_columns(tmp_path):
    from drdo import objectives

    pairs = pd.DataFrame({"pair_id": ["a"], "document": ["we argued. alice borrowed the car."],
                          "chosen": ["alice borrowed the car."], "rejected": ["bob sold the dog."]})
    io.write_parquet(pairs, tmp_path / "pairs.parquet", {})
    main(["gold-table", "--params", json.dumps({"gold": {}}), "--pairs", str(tmp_path / "pairs.parquet"),
          "--out", str(tmp_path / "gold.parquet")])
    table = io.read_parquet(tmp_path / "gold.parquet")
    assert table.to_dict("records") == [{"pair_id": "a", "gold_chosen": 1.0, "gold_rejected": -0.5}]
    drdo = {"alpha": 0.1, "gamma": 2.0, "student_reward": "head", "logp_agg": "sum"}
    assert objectives.build("drdo", drdo).columns == ("oracle_chosen", "oracle_rejected")
    assert objectives.build("drdo", {**drdo, "teacher": "gold"}).columns == ("gold_chosen", "gold_rejected")


def test_aggregate_refuses_inputs_of_another_lineage(tmp_path):
    scores = pd.DataFrame({"policy": ["drdo"], "split": ["all"], "eval_set": ["tldr"], "prompt_id": ["p"],
                           "temperature": [0.7], "response": ["r"], "finished": [True], "too_long": [False],
                           "oracle": [1.0], "gold": [0.5]})
    io.write_parquet(scores, tmp_path / "drdo.parquet", {"lineage": "old"})
    out = tmp_path / "winrates.csv"
    params = {"splits": ["all"], "methods": ["drdo"], "scorers": ["oracle"], "unfinished": "as_scored"}
    with pytest.raises(ValueError, match=r"drdo\.parquet was made under lineage old.*give new"):
        main(["--expect-lineage", json.dumps({str(tmp_path / "drdo.parquet"): "new"}), "winrates",
              "--params", json.dumps(params), "--scores", str(tmp_path / "drdo.parquet"), "--out", str(out)])
    assert not out.exists()


def test_outputs_record_the_lineage_they_were_made_under(tmp_path):
    out = tmp_path / "gold.parquet"
    pairs = pd.DataFrame({"pair_id": ["a"], "document": ["x"], "chosen": ["y"], "rejected": ["z"]})
    io.write_parquet(pairs, tmp_path / "pairs.parquet", {})
    gold = {"w_coverage": 1.0, "w_hallucination": 0.5, "w_length": 0.05, "words_per_fact": 5, "length_slack": 2}
    main(["--lineage", "abc123", "gold-table", "--params", json.dumps({"gold": gold}),
          "--pairs", str(tmp_path / "pairs.parquet"), "--out", str(out)])
    assert io.read_provenance(out)["lineage"] == "abc123"


def test_preload_imports_each_torch_stage_stack_and_freezes_it():
    # A fresh interpreter, as a job's own: preload must import what each stage names (a wrong
    # module name fails here) and leave the GC on with the imported objects frozen.
    code = ("import gc, sys\n"
            "from drdo.cli import TORCH_STAGES, preload\n"
            "for stage in TORCH_STAGES: preload(stage)\n"
            "assert {'drdo.trainer', 'drdo.generation', 'drdo.scoring', 'accelerate', 'transformers'} <= set(sys.modules)\n"
            "assert gc.isenabled() and gc.get_freeze_count() > 100_000, gc.get_freeze_count()\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class _Loaded(Exception):
    """Raised by the stand-in from_pretrained once it has seen a stage's arguments."""


@pytest.mark.parametrize("stage", ["train-sft", "train-oracle", "table-logp", "table-reward", "generate", "score"])
def test_every_model_running_stage_loads_with_the_configured_kernel(tmp_path, monkeypatch, stage):
    """model.attn_implementation (in the stage's params) reaches from_pretrained of every model it runs."""
    from drdo import modeling

    seen = []

    class Recording:
        @staticmethod
        def from_pretrained(path, **kwargs):
            seen.append(kwargs.get("attn_implementation"))
            raise _Loaded

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / modeling.HEAD_FILE).write_text("")  # a reward model's layout; never read
    monkeypatch.setattr(modeling, "AutoModelForCausalLM", Recording)
    monkeypatch.setattr(modeling, "load_tokenizer", lambda path: None)
    rows = pd.DataFrame({"pair_id": [0], "prompt": ["p"], "chosen": ["c"], "rejected": ["r"], "document": [None],
                         "eval_set": ["tldr"], "prompt_id": ["a"], "reference": ["r"], "split": ["train"]})
    monkeypatch.setattr(io, "read_parquet", lambda path: rows)
    params = json.dumps({"attn_implementation": "eager", "max_length": 64, "max_prompt_length": 32, "batch_size": 2,
                         "lr": 1e-3, "temperatures": [1.0], "top_p": 1.0, "max_new_tokens": 4, "seed": 0})
    out = str(tmp_path / "out")
    args = {"train-sft": ["train", "--objective", "sft", "--init", str(model_dir), "--data", "x", "--out", out],
            "train-oracle": ["train", "--objective", "oracle", "--init", str(model_dir), "--data", "x", "--out", out],
            "table-logp": ["table", "--pairs", "x", "--model", f"ref_logp={model_dir}", "--value", "logp", "--out", out],
            "table-reward": ["table", "--pairs", "x", "--model", f"oracle={model_dir}", "--value", "reward", "--out", out],
            "generate": ["generate", "--policy", str(model_dir), "--prompts", "x", "--out", out],
            "score": ["score", "--prompts", "x", "--oracle", str(model_dir), "--policy", "reference", "--split", "-",
                      "--out", out]}[stage]
    with pytest.raises(_Loaded):
        main([args[0], "--params", params, *args[1:]])
    assert seen == ["eager"]


def test_a_torch_job_flushes_subnormals_on_every_thread():
    # Subnormal floats are slow on x86 (a DRDO step whose focal gradient underflowed took 1.6x a
    # DPO step); a job's process flushes them to zero on every intra-op thread, the ones torch
    # starts later included. x * 1 of a subnormal x is 0 only where flushed; 2 threads split it.
    code = ("import torch\n"
            "from drdo import cli\n"
            "seen = {}\n"
            "def probe(a):\n"
            "    seen['threads'] = torch.get_num_threads()\n"
            "    seen['nonzero'] = int((torch.full((1 << 22,), 1e-39) * 1.0).count_nonzero())\n"
            "cli.cmd_train = probe\n"
            "cli.main(['--threads', '2', 'train', '--objective', 'dpo', '--init', 'i', '--data', 'd', '--out', 'o'],\n"
            "         fresh_process=True)\n"
            "assert seen == {'threads': 2, 'nonzero': 0}, seen\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name_key", [None, "oracle.base"])
def test_a_model_that_is_neither_a_folder_nor_a_hub_model_names_its_config_key(tmp_path, name_key):
    """models/my-llama (no such folder; not a hub model either) fails in the base stage naming the
    config key and the folder it looked for, not only transformers' "couldn't connect"."""
    pd.DataFrame({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}).to_parquet(tmp_path / "pairs.parquet")
    pd.DataFrame({"prompt": ["p"], "response": ["a"]}).to_parquet(tmp_path / "sft.parquet")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "workflow"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "drdo", "base", "--params",
                           json.dumps({"name_or_path": "models/my-llama", "dtype": "float32"}),
                           "--pairs", "pairs.parquet", "--sft", "sft.parquet", "--out", "base",
                           *(["--name-key", name_key] if name_key else [])],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not (tmp_path / "base").exists()
    key = name_key or "model.name_or_path"
    assert (f"config key {key}: cannot load 'models/my-llama': there is no directory {tmp_path / 'models' / 'my-llama'}"
            in proc.stderr), proc.stderr[-2000:]
    assert "HF_HUB_OFFLINE is set and the Hugging Face cache holds no such model" in proc.stderr
