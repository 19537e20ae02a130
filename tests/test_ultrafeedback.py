"""task: ultrafeedback -- loaders through the real `datasets` code on local folders laid out like
the hub repositories, the held-out carve, the normalise and eval-prompts stages, the judge on the new eval sets,
and (marked e2e) the whole DAG on the tiny model with an Oracle on a base model of its own.
Nothing here contacts a network address other than 127.0.0.1."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Response

import ultrafeedback_support as ufs
from drdo import io
from drdo.base_model import tiny_llama, train_tokenizer
from drdo.cli import main
from drdo.data import loaders
from drdo.judge import protocol
from drdo.judge.prompts import load_template

REPO = Path(__file__).resolve().parents[1]
HOLDOUT = {"validation": 0.2, "test": 0.2, "seed": 0}
TEMPLATES = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["judge"]["prompts"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("uf")
    uf, alpaca = ufs.world_rows(root / "world", n_train_posts=12, n_valid_posts=3, n_test_posts=1, n_news=6,
                                n_sft_extra_posts=0)
    bad_uf, bad_alpaca = ufs.bad_preference_rows(uf[0]), ufs.bad_alpaca_rows(alpaca[0])
    specs = ufs.write_hub_layouts(root / "hub", uf + list(bad_uf.values()), alpaca + list(bad_alpaca.values()))
    return {"specs": specs, "uf": uf, "alpaca": alpaca, "bad_uf": bad_uf, "bad_alpaca": bad_alpaca, "root": root}


def test_preferences_through_datasets_with_bad_rows_counted(hub):
    df, drops = loaders.load_preferences(hub["specs"]["preferences"], HOLDOUT)
    assert {r: n for r, n in drops.items() if n} == {reason: 1 for reason in hub["bad_uf"]}
    assert len(df) == len(hub["uf"]) and list(df.columns) == loaders.COMPARISON_COLUMNS
    first = hub["uf"][0]
    row = df.iloc[0]
    assert row["prompt"] == row["document"] == first["prompt"].strip()
    assert row["chosen"] == first["chosen"][1]["content"] and row["rejected"] == first["rejected"][1]["content"]
    assert row["confidence"] == first["chosen-rating"] - first["rejected-rating"] and df["confidence"].dtype == float
    assert (df["confidence"] > 0).all() and row["chosen_policy"] == first["chosen-model"]
    # the carve is by prompt: every prompt's rows lie in one part, and every part is used
    assert (df.groupby("prompt")["split"].nunique() == 1).all()
    assert set(df["split"]) == {"train", "validation", "test"}
    # a local Parquet file (data.source: files) gives the same rows
    local, _ = loaders.load_preferences(next((hub["root"] / "hub").rglob("train-*.parquet")), HOLDOUT)
    pd.testing.assert_frame_equal(df, local)


def test_holdout_is_seeded_by_prompt():
    prompts = [f"instruction {i}" for i in range(4000)]
    parts = pd.Series([loaders.holdout_part(p, {"validation": 0.05, "test": 0.1, "seed": 0}) for p in prompts])
    share = parts.value_counts(normalize=True)
    assert abs(share["test"] - 0.1) < 0.02 and abs(share["validation"] - 0.05) < 0.015
    again = [loaders.holdout_part(p, {"validation": 0.05, "test": 0.1, "seed": 0}) for p in prompts]
    other = [loaders.holdout_part(p, {"validation": 0.05, "test": 0.1, "seed": 1}) for p in prompts]
    assert again == parts.tolist() and other != again
    with pytest.raises(ValueError, match="data.holdout"):
        loaders.load_preferences("unused.parquet", {"validation": 0.6, "test": 0.5, "seed": 0})


def test_alpaca_eval_from_its_parquet_conversion(hub):
    df, drops = loaders.load_alpaca_eval(hub["specs"]["alpaca_eval"])
    assert {r: n for r, n in drops.items() if n} == {reason: 1 for reason in hub["bad_alpaca"]}
    assert df["prompt"].tolist() == [r["instruction"] for r in hub["alpaca"]]
    assert df["reference"].tolist() == [r["output"] for r in hub["alpaca"]]
    assert df["prompt_id"].is_unique and (df["document"] == df["prompt"]).all()


def test_data_stages_write_the_tldr_schemas(hub, tmp_path):
    out = {k: tmp_path / f"{k}.parquet" for k in ("pairs", "sft", "eval")}
    params = {"task": "ultrafeedback", "holdout": HOLDOUT, "hub": hub["specs"]}
    main(["normalise", "--params", json.dumps(params), "--out-pairs", str(out["pairs"]), "--out-sft", str(out["sft"])])
    main(["eval-prompts", "--params", json.dumps({**params, "n_ultrafeedback": 1, "n_alpaca_eval": 100, "seed": 0}),
          "--out", str(out["eval"])])
    pairs, sft, evals = (io.read_parquet(out[k]) for k in ("pairs", "sft", "eval"))
    every, _ = loaders.load_preferences(hub["specs"]["preferences"], HOLDOUT)
    assert list(pairs.columns) == loaders.COMPARISON_COLUMNS and set(pairs["split"]) == {"train", "validation"}
    assert list(sft.columns) == loaders.SFT_COLUMNS and list(evals.columns) == loaders.EVAL_COLUMNS
    # SFT on the chosen responses of the training prompts only
    train = every[every["split"] == "train"]
    assert set(zip(sft["prompt"], sft["response"])) == set(zip(train["prompt"], train["chosen"]))
    assert len(sft) == len(set(zip(train["prompt"], train["chosen"])))
    # eval sets: held-out prompts (reference: a chosen response) and every AlpacaEval instruction
    test = every[every["split"] == "test"]
    assert test["prompt"].nunique() >= 2  # so that n_ultrafeedback samples
    assert evals["eval_set"].value_counts().to_dict() == {"ultrafeedback": 1, "alpaca_eval": len(hub["alpaca"])}
    held = evals[evals["eval_set"] == "ultrafeedback"]
    assert set(held["prompt"]) <= set(test["prompt"]) and not set(held["prompt"]) & set(pairs["prompt"])
    assert set(held["reference"]) <= set(test["chosen"])
    assert io.read_provenance(out["pairs"])["drops"]["not_single_turn"] == 1


def test_judge_uses_the_instruction_prompt_on_alpaca_eval_only(tmp_path):
    prompts = pd.DataFrame({"eval_set": ["ultrafeedback"] * 3 + ["alpaca_eval"] * 3,
                            "prompt_id": [f"p{i}" for i in range(6)],
                            "prompt": [f"Instruction number {i}?" for i in range(6)]})
    prompts = prompts.assign(document=prompts["prompt"], reference=[f"Reference {i}." for i in range(6)])
    rows = []
    for policy, split in (("drdo", "all"), ("dpo", "all"), ("sft", "-")):
        for r in prompts.itertuples():
            rows.append({"eval_set": r.eval_set, "prompt_id": r.prompt_id, "temperature": 0.7, "policy": policy,
                         "split": split, "response": f"{policy} answers {r.prompt_id}.", "oracle": 0.0})
    rows += [{"eval_set": r.eval_set, "prompt_id": r.prompt_id, "temperature": np.nan, "policy": "reference",
              "split": "-", "response": r.reference, "oracle": 0.0} for r in prompts.itertuples()]
    scores = pd.DataFrame(rows)  # no gold column: real data
    templates = {k: load_template(REPO / v) for k, v in TEMPLATES.items()}
    p = {"n_prompts": 10, "seed": 0, "temperatures": [0.7], "splits": ["all"], "temperature": 0.0, "max_tokens": 8,
         "response_format": "text", "comparisons": [["drdo", "dpo"], ["reference", "drdo"]],
         "instruction_sets": ["alpaca_eval"], "eval_sets": ["alpaca_eval"]}
    items, calls = protocol.calls(protocol.plan(scores, prompts, p), templates, p, "fake")
    assert set(items["eval_set"]) == {"alpaca_eval"} and len(calls) == 2 * 2 * 3
    for call in calls:
        text = call.messages[0]["content"]
        assert text.startswith("For the following query to a chatbot") and "Instruction number" in text
        assert "summar" not in text.lower()
    # without eval_sets the held-out UltraFeedback prompts are judged too, with the summary prompts
    items, _ = protocol.calls(protocol.plan(scores, prompts, {**p, "eval_sets": None}), templates, p, "fake")
    assert set(items["eval_set"]) == {"ultrafeedback", "alpaca_eval"}
    with pytest.raises(ValueError, match="judge.eval_sets"):
        protocol.plan(scores, prompts, {**p, "eval_sets": ["news"]})


# ------------------------------------------------------------------------------------- e2e
OUT = "results/e2e-ultrafeedback"


class InstructionJudge:
    """A fake OpenAI-compatible judge: prefers the longer response; records each prompt it gets."""

    def __init__(self, server):
        self.texts, self.lock = [], threading.Lock()
        server.expect_request("/v1/chat/completions", method="POST").respond_with_handler(self)
        models = {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "tests"}]}
        server.expect_request("/v1/models", method="GET").respond_with_json(models)  # what it serves

    def __call__(self, request):
        text = request.get_json()["messages"][0]["content"]
        with self.lock:
            self.texts.append(text)
        a = text.split("Response A:", 1)[1].split("Response B:", 1)[0]
        b = text.split("Response B:", 1)[1].split("FIRST", 1)[0]
        verdict = "A" if len(a.split()) >= len(b.split()) else "B"
        body = {"id": "c", "object": "chat.completion", "created": 0, "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Comparison: x.\nPreferred: {verdict}"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 8, "total_tokens": 108}}
        return Response(json.dumps(body), content_type="application/json")


def _oracle_base(path: Path, texts: list[str]) -> Path:
    """A tiny Llama with a tokenizer of its own (another vocabulary than the policy's): the
    Oracle of oracle.base, as OPT-1.3B is under the paper's other policies."""
    tok = train_tokenizer(texts, 320)
    model = tiny_llama(tok, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256}, 1)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("uf-e2e")
    uf, alpaca = ufs.world_rows(root / "world", n_train_posts=60, n_valid_posts=15, n_test_posts=1, n_news=12,
                                n_sft_extra_posts=0)
    specs = ufs.write_hub_layouts(root / "hub", uf, alpaca)
    texts = [r["prompt"] for r in uf] + [m["content"] for r in uf for m in r["chosen"] + r["rejected"]]
    oracle_base = _oracle_base(root / "oracle-base", texts)
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    judge = InstructionJudge(server)
    override = {
        "out_dir": OUT,
        "data": {"source": "hub", "holdout": {"validation": 0.15, "test": 0.15, "seed": 0},
                 "hub": {k: {f: v for f, v in spec.items() if f != "cache_dir"} for k, spec in specs.items()}},
        "model": {"chat_template": "config/chat_templates/user_assistant.jinja"},
        "oracle": {"base": str(oracle_base)},
        "eval": {"n_ultrafeedback": 8, "n_alpaca_eval": 8},
        "align": {"splits": ["all"]},
        "winrates": {"scorers": ["oracle"]},
        "judge": {"enabled": True, "base_url": server.url_for("/v1"), "model": "fake", "api_key_env": None,
                  "eval_sets": ["alpaca_eval"], "instruction_sets": ["alpaca_eval"], "splits": ["all"],
                  "temperatures": [0.9], "n_prompts": 4, "comparisons": [["drdo", "dpo"], ["drdo", "edpo"]],
                  "max_concurrency": 1, "prices": {"input_per_mtok": 0.0, "output_per_mtok": 0.0}},
    }
    (root / "override.yaml").write_text(yaml.safe_dump(override))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "hf-cache"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(root / "wd"),
           "--cores", "2", "--configfile", str(REPO / "tests" / "configs" / "e2e.yaml"),
           str(REPO / "tests" / "configs" / "e2e-ultrafeedback.yaml"), str(root / "override.yaml"),
           "--", f"{OUT}/winrates.csv", "figures"]  # figures: also validation.csv and table5.csv
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        yield {"out": root / "wd" / OUT, "judge": judge, "oracle_base": oracle_base, "alpaca": alpaca}
    finally:
        server.clear()
        server.stop()


@pytest.mark.e2e
def test_ultrafeedback_dag_end_to_end(e2e):
    out = e2e["out"]
    w = pd.read_csv(out / "winrates.csv")
    oracle = w[w["scorer"] == "oracle"]
    # Table 2's counterpart: Oracle win-rates of every comparison at each temperature, on both eval sets
    assert set(oracle["eval_set"]) == {"ultrafeedback", "alpaca_eval"}
    assert set(oracle["temperature"]) == {0.5, 0.9} and set(oracle["split"]) == {"all"}
    assert len(oracle) == 9 * 2 * 2
    assert (oracle["n"] > 0).all() and (oracle["n"] <= 8).all()
    assert {("drdo", "sft"), ("drdo", "dpo"), ("drdo", "edpo")} <= set(zip(oracle["policy_a"], oracle["policy_b"]))
    # Table 3's counterpart: judge rows on AlpacaEval only, with the instruction prompt
    judged = w[w["scorer"] == "judge"]
    assert set(judged["eval_set"]) == {"alpaca_eval"} and len(judged) == 2 and (judged["n"] == 4).all()
    texts = e2e["judge"].texts
    assert texts and all(t.startswith("For the following query to a chatbot") for t in texts)
    instructions = {r["instruction"] for r in e2e["alpaca"]}
    assert all(any(i in t for i in instructions) for t in texts)
    # the policy's prompt format is the template file, carried by every checkpoint after the base
    template = (REPO / "config" / "chat_templates" / "user_assistant.jinja").read_text()
    for model in ("base", "sft", "drdo-all", "oracle_base", "oracle"):
        cfg = json.loads((out / "models" / model / "tokenizer_config.json").read_text())
        saved = cfg.get("chat_template") or (out / "models" / model / "chat_template.jinja").read_text()
        assert saved == template, model
    # the Oracle has its own tokenizer (oracle.base); pairs too long for it are dropped and counted
    oracle_vocab = json.loads((out / "models" / "oracle" / "tokenizer.json").read_text())["model"]["vocab"]
    policy_vocab = json.loads((out / "models" / "sft" / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(oracle_vocab) != len(policy_vocab)
    assert "for the Oracle's tokenizer" in (out / "logs" / "split.log").read_text()
    # confidence splits from the rating margin exist (the paper config uses `all` only)
    t5 = pd.read_csv(out / "data" / "table5.csv")
    assert t5["split"].tolist() == ["all", "hc_he", "lc_le"] and (t5["n_train"] > 0).all()
    validation = pd.read_csv(out / "validation.csv").set_index("model")
    assert 0 <= validation.loc["oracle", "reward_acc"] <= 1 and validation.loc["oracle", "train_examples"] > 0
    assert (out / "figures" / "forest_oracle.png").stat().st_size > 0
    scores = io.read_parquet(out / "scores" / "drdo-all.parquet")
    assert "gold" not in scores.columns and set(scores["eval_set"]) == {"ultrafeedback", "alpaca_eval"}
