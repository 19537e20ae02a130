"""model.revision (and oracle.base_revision) pin the hub model the base stage loads: the revision
reaches every load, the base model's provenance records it and the commit read, and it is in the
lineage (a new revision re-runs the base model and what follows).

No hub here: a Hugging Face cache laid out as the hub client writes it (models--org--tiny with
refs/<name> -> snapshots/<commit>/), read offline, holds two revisions of a tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from drdo import base_model, io, modeling
from drdo.base_model import tiny_llama, train_tokenizer
from test_workflow import OUT, planned_jobs, snakemake

REPO = Path(__file__).resolve().parents[1]
ARCH = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 256}
MAIN, V1 = "a" * 40, "b" * 40  # the commits behind refs/main and refs/v1


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """org/tiny at two commits, with different weights and tokenizers."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    for commit, ref, seed, words in ((MAIN, "main", 0, "the cat sat"), (V1, "v1", 1, "a dog ran far")):
        snapshot = repo / "snapshots" / commit
        tok = train_tokenizer([f"{words} {i}" for i in range(50)], vocab_size=300)
        tiny_llama(tok, ARCH, seed).save_pretrained(snapshot)
        tok.save_pretrained(snapshot)
        (repo / "refs" / ref).write_text(commit)
    return cache


def test_revision_reaches_every_load(monkeypatch):
    calls = []

    def spy(kind):
        def from_pretrained(name, **kwargs):
            calls.append((kind, name, kwargs.get("revision")))
            raise StopIteration  # what was asked is all this test needs
        return from_pretrained

    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_pretrained", spy("model"))
    monkeypatch.setattr(modeling.AutoTokenizer, "from_pretrained", spy("tokenizer"))
    for kind, load in (("model", modeling.load_causal_lm), ("tokenizer", modeling.load_tokenizer)):
        with pytest.raises(StopIteration):
            load("org/tiny", revision="v1")
        assert calls.pop() == (kind, "org/tiny", "v1")
    monkeypatch.setattr(base_model, "load_tokenizer", lambda name, revision=None: calls.append(("tok", revision)))
    monkeypatch.setattr(base_model, "load_causal_lm", lambda name, dtype, revision=None: calls.append(("lm", revision)))
    base_model.build_base({"name_or_path": "org/tiny", "revision": "0123abc", "dtype": "float32"}, [])
    assert sorted(calls) == [("lm", "0123abc"), ("tok", "0123abc")]


def _base_stage(tmp_path: Path, cache: Path, revision, name: str) -> Path:
    pd.DataFrame({"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]}).to_parquet(tmp_path / "pairs.parquet")
    pd.DataFrame({"prompt": ["p"], "response": ["r"]}).to_parquet(tmp_path / "sft.parquet")
    params = {"name_or_path": "org/tiny", "revision": revision, "dtype": "float32", "chat_template": False}
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{REPO / 'workflow'}:{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "drdo", "base", "--params", json.dumps(params), "--pairs",
                           str(tmp_path / "pairs.parquet"), "--sft", str(tmp_path / "sft.parquet"), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


def test_base_stage_loads_the_revision_and_records_the_commit(tmp_path, hub_cache):
    snapshots = hub_cache / "models--org--tiny" / "snapshots"
    for revision, commit in ((None, MAIN), ("v1", V1), (MAIN, MAIN)):
        out = _base_stage(tmp_path, hub_cache, revision, f"base-{revision}")
        assert _same_weights(out, snapshots / commit)
        assert (out / "tokenizer.json").read_text() == (snapshots / commit / "tokenizer.json").read_text()
        prov = io.read_provenance(out)
        assert prov["config"]["revision"] == revision
        assert prov["hub_model"] == {"id": "org/tiny", "revision": revision, "commit": commit}


@pytest.mark.e2e
def test_a_new_revision_reruns_the_base_model_and_what_follows(tmp_path, hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    target = f"{OUT}/data/splits/all.parquet"
    pinned = "model: {name_or_path: org/tiny, revision: main}"
    snakemake(tmp_path, target, override=pinned)
    assert io.read_provenance(tmp_path / OUT / "models" / "base")["hub_model"]["commit"] == MAIN
    assert planned_jobs(snakemake(tmp_path, "-n", target, override=pinned)) == {}
    assert planned_jobs(snakemake(tmp_path, "-n", target, override=pinned.replace("main", "v1"))) == {
        "base_model": 1, "split": 1}
    # the lineage of every later artifact follows (the SFT policy's, say)
    def sft_lineage(override):
        proc = snakemake(tmp_path, "-n", "-p", f"{OUT}/models/sft", override=override)
        line = next(line for line in (proc.stdout + proc.stderr).splitlines() if "--objective sft" in line)
        return line.split("--lineage ")[1].split()[0]

    assert sft_lineage(pinned) != sft_lineage(pinned.replace("main", "v1"))


@pytest.mark.e2e
@pytest.mark.parametrize("override, key", [
    ("model: {revision: abc}", "model.revision"),                      # `tiny` has no revisions
    ("model: {name_or_path: gguf:smollm2, revision: abc}", "model.revision"),
    ("oracle: {base_revision: abc}", "oracle.base_revision"),          # no oracle.base to pin
])
def test_a_revision_without_a_hub_model_stops_before_any_job(tmp_path, override, key):
    proc = snakemake(tmp_path, "-n", override=override, check=False)
    assert proc.returncode != 0 and f"config key {key}" in proc.stdout + proc.stderr
    assert not (tmp_path / OUT).exists()
