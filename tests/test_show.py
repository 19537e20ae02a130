"""``drdo show`` (tables, CSVs, model directories, --json, plain errors, no torch) and the CLI's help."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drdo import cli, io, objectives

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}


@pytest.fixture
def scores(tmp_path):
    src = tmp_path / "prompts.parquet"
    io.write_parquet(pd.DataFrame({"prompt": ["p"]}), src, {"stage": "normalise"})
    df = pd.DataFrame({"prompt_id": [f"tldr-{i}" for i in range(8)], "temperature": 0.7,
                       "oracle": np.linspace(-1, 1, 8), "response": ["a summary"] * 7 + [None]})
    io.LINEAGE = "abc123lineage"
    try:
        prov = io.provenance("score", {"batch_size": 100, "gold": {"w_length": 0.05}}, {"prompts": src})
    finally:
        io.LINEAGE = None
    io.write_parquet(df, tmp_path / "scores.parquet", prov)
    return tmp_path / "scores.parquet", prov


def show(capsys, *argv):
    assert cli.main(["show", *map(str, argv)]) == 0
    return capsys.readouterr().out


def test_parquet_schema_rows_head_and_provenance(scores, capsys):
    path, prov = scores
    out = show(capsys, path, "--rows", "3")
    assert f"{path}: parquet table, 8 rows, 4 columns" in out
    for column, kind in (("prompt_id", "string"), ("temperature ", "double"), ("oracle", "double"),
                         ("response", "string")):
        assert re.search(rf"^  {column} +\w*{kind}$", out, re.M)  # string or large_string, as pyarrow writes it
    assert "first 3 rows:" in out and "tldr-2" in out and "tldr-3" not in out
    assert "  stage: score" in out and "  lineage: abc123lineage" in out and f"  git_commit: {prov['git_commit']}" in out
    assert "    batch_size: 100" in out and "      w_length: 0.05" in out  # the config, nested
    assert f"    prompts: {prov['inputs']['prompts']['path']} (sha256 {prov['inputs']['prompts']['sha256']})" in out
    assert "  versions:" in out and f"    pyarrow: {prov['versions']['pyarrow']}" in out


def test_json_has_fixed_keys(scores, capsys):
    path, prov = scores
    info = json.loads(show(capsys, path, "--json"))
    assert set(info) == {"kind", "path", "rows", "columns", "head", "provenance"}
    assert info["kind"] == "parquet" and info["rows"] == 8 and len(info["head"]) == 5
    assert info["columns"][2] == {"name": "oracle", "type": "double"} and "string" in info["columns"][0]["type"]
    assert info["head"][0] == {"prompt_id": "tldr-0", "temperature": 0.7, "oracle": -1.0, "response": "a summary"}
    assert info["provenance"] == json.loads(json.dumps(prov, default=str))
    last = json.loads(show(capsys, path, "--json", "--rows", "8"))["head"][-1]
    assert last["response"] is None  # JSON-safe: missing values are null


def test_csv_from_its_sidecar(tmp_path, capsys):
    table = pd.DataFrame({"policy_a": ["drdo", "dpo"], "win_rate": [0.61, float("nan")], "n": [100, 0]})
    io.write_csv(table, tmp_path / "winrates.csv", {"stage": "winrates", "config": {"n_boot": 2000}})
    out = show(capsys, tmp_path / "winrates.csv")
    assert "csv table, 2 rows, 3 columns" in out and "win_rate  float64" in out and "  stage: winrates" in out
    info = json.loads(show(capsys, tmp_path / "winrates.csv", "--json"))
    assert info["kind"] == "csv" and info["provenance"]["config"] == {"n_boot": 2000}
    assert info["head"][1] == {"policy_a": "dpo", "win_rate": None, "n": 0}
    (tmp_path / "winrates.provenance.json").unlink()
    assert "provenance: none (no .provenance.json beside it)" in show(capsys, tmp_path / "winrates.csv")
    assert json.loads(show(capsys, tmp_path / "winrates.csv", "--json"))["provenance"] is None


def test_model_directory_manifest_metrics_and_validation(tmp_path, capsys):
    model = tmp_path / "models" / "drdo-all"
    model.mkdir(parents=True)
    prov = {"stage": "train/drdo", "config": {"alpha": 0.1, "gamma": 2.0}, "lineage": "f00d", "inputs": {},
            "versions": {"torch": "2.13.0"}, "git_commit": "deadbeef", "validation": {"loss": 0.52, "acc": 0.75},
            "train_examples": 1234}
    io.write_json(prov, model / io.MANIFEST)
    metrics = pd.DataFrame({"step": [1, 2, 3], "lr": [1e-4, 2e-4, 3e-4], "loss": [0.9, 0.7, 0.5],
                            "acc": [0.4, 0.6, 0.8]})
    io.write_parquet(metrics, model / "metrics.parquet", prov)
    out = show(capsys, model)
    assert out.startswith(f"{model}: model checkpoint (train/drdo)")
    assert "train_examples: 1,234" in out and "validation: acc=0.75 loss=0.52" in out
    assert "training: 3 steps (metrics.parquet)" in out
    assert "  first: lr=0.0001 loss=0.9 acc=0.4" in out and "  last: lr=0.0003 loss=0.5 acc=0.8" in out
    assert "  git_commit: deadbeef" in out and "    gamma: 2.0" in out and "  inputs: (none)" in out
    info = json.loads(show(capsys, model, "--json"))
    assert set(info) == {"kind", "path", "manifest", "validation", "training"}
    assert info["training"] == {"steps": 3, "columns": ["lr", "loss", "acc"],
                                "first": {"lr": 1e-4, "loss": 0.9, "acc": 0.4}, "last": {"lr": 3e-4, "loss": 0.5, "acc": 0.8}}
    assert info["validation"] == {"loss": 0.52, "acc": 0.75} and info["manifest"] == prov
    (model / "metrics.parquet").unlink()  # a base model: a manifest, no metrics
    assert json.loads(show(capsys, model, "--json"))["training"] is None


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "nothing.parquet", "does not exist"),
    (lambda p: p, "is a directory without manifest.json"),
    (lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt", "is not a Parquet file (.parquet), a CSV"),
    (lambda p: (p / "bad.parquet").write_text("not parquet") and p / "bad.parquet", "is not a readable Parquet file"),
])
def test_a_path_that_is_none_of_these_gets_a_plain_error(tmp_path, make, message):
    path = make(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "drdo", "show", str(path)], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"drdo show: {path}") and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_show_does_not_import_torch(scores, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    io.write_json({"stage": "base"}, model / io.MANIFEST)
    code = ("import sys; from drdo import cli; "
            f"cli.main(['show', {str(scores[0])!r}]); cli.main(['show', '--json', {str(model)!r}]); "
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert proc.stdout.splitlines()[-1] == "[]"


def test_console_script_is_the_cli():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["drdo"].split(":")
    assert (module, func) == ("drdo.cli", "main") and callable(cli.main)


def test_help_lists_every_stage_in_one_line_and_the_choices(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    stages = ["normalise", "eval-prompts", "base", "base-gguf", "split", "train", "table", "gold-table", "generate", "score",
              "report", "winrates", "judge", "show"]
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("    ") and line.split()}
    assert set(stages) <= set(lines)
    assert all(len(lines[s].split()) > 2 for s in stages)  # each with its one-line help
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "{" + ",".join(objectives.OBJECTIVES) + "}" in capsys.readouterr().out.replace("\n", "").replace(" ", "")
    with pytest.raises(SystemExit):
        cli.main(["table", "--help"])
    assert "{reward,logp}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["train", "--objective", "ppo", "--init", "i", "--data", "d", "--out", "o"])
    assert "invalid choice: 'ppo'" in capsys.readouterr().err
