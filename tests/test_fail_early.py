"""A wrong config or a missing key stops the workflow before its first job, with one plain
sentence naming the key; an absolute out_dir works. Dry runs, and real runs whose only job is
a data job (normalise or eval_prompts) on a garbage file (seconds: it proves that jobs start)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "tests" / "configs" / "e2e.yaml"
KEY = "DRDO_TEST_FAIL_EARLY_KEY"


def snakemake(workdir: Path, override: str, *targets: str, dry: bool = True, env: dict | None = None):
    (workdir / "override.yaml").write_text(override)
    full_env = {k: v for k, v in os.environ.items() if k != KEY}
    full_env.update(HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {}))
    cmd = [sys.executable, "-m", "snakemake", *(["-n"] if dry else []), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--cores", "1", "--configfile", str(E2E), str(workdir / "override.yaml"),
           "--", *(targets or ["results/e2e/winrates.csv"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)
    return proc, proc.stdout + proc.stderr


@pytest.mark.parametrize("override, message", [
    ("algin: {methods: [drdo]}", "config key algin is not a setting; did you mean align?"),
    ("align: {drdo: {gama: 1.0}}", "config key align.drdo.gama is not a setting; did you mean align.drdo.gamma?"),
    ("sft: {learning_rate: 0.1}", "config key sft.learning_rate is not a setting; the keys under sft are: batch_size,"),
    ("train: {batch_size: '32'}", "config key train.batch_size: '32' is not of type 'integer'"),
    ("judge: {temprature: 0.5}", "config key judge.temprature is not a setting; did you mean judge.temperature?"),
])
def test_a_wrong_key_gets_one_short_message(tmp_path, override, message):
    proc, out = snakemake(tmp_path, override)
    assert proc.returncode != 0 and message in out
    assert len(out.splitlines()) < 12  # was 674 lines: the whole config and schema
    assert "Failed validating" not in out and "On instance" not in out


def test_a_missing_data_file_names_its_key(tmp_path):
    (tmp_path / "here.jsonl").write_text("{}\n")
    files = "{comparisons: missing.jsonl, sft_train: here.jsonl, sft_test: here.jsonl, news: here.jsonl}"
    proc, out = snakemake(tmp_path, f"data: {{source: files, files: {files}}}\nwinrates: {{scorers: [oracle]}}\n")
    assert proc.returncode != 0
    assert "config key data.files.comparisons: missing.jsonl does not exist" in out and str(tmp_path) in out
    assert "MissingInputException" not in out


def test_an_absolute_out_dir_works(tmp_path):
    out, wd = tmp_path / "scratch" / "me" / "results", tmp_path / "wd"
    wd.mkdir()
    proc, text = snakemake(wd, f"out_dir: {out}\n", f"{out}/winrates.csv")
    assert proc.returncode == 0, text
    assert f"{out}/winrates.csv" in text and f"{out}/validation.csv" in text and "align" in text
    proc, text = snakemake(wd, f"out_dir: {out}/\n", f"{out}/data/pairs.parquet", dry=False)
    assert proc.returncode == 0, text
    assert (out / "data" / "pairs.parquet").is_file() and (out / "logs" / "normalise.log").is_file()
    assert not (wd / "results").exists()


# --------------------------------------------------------------------------- the judge's key
GARBAGE = "{comparisons: bad.jsonl, sft_train: bad.jsonl, sft_test: bad.jsonl, news: bad.jsonl}"


def judge_run(tmp_path, judge: str, env: dict | None = None, dry: bool = False):
    """A real run to winrates.csv with the judge on; its first job (normalise or eval_prompts, the
    two data jobs, whichever Snakemake starts first) fails on garbage."""
    (tmp_path / "bad.jsonl").write_text("not json\n")
    override = (f"data: {{source: files, files: {GARBAGE}}}\nwinrates: {{scorers: [oracle]}}\n"
                f"judge: {{enabled: true, temperatures: [0.9], splits: [all], comparisons: [[drdo, dpo]], {judge}}}\n")
    return snakemake(tmp_path, override, dry=dry, env=env)


def test_a_real_run_without_the_judges_key_stops_before_any_job(tmp_path):
    proc, out = judge_run(tmp_path, f"api_key_env: {KEY}")
    assert proc.returncode != 0
    assert f"the environment variable {KEY} (named by config key judge.api_key_env) is not set" in out
    assert "rule normalise" not in out and "rule eval_prompts" not in out  # no job ran
    assert not (tmp_path / "results").exists()


def test_with_the_key_or_without_a_need_for_one_the_jobs_start(tmp_path):
    for judge, env in ((f"api_key_env: {KEY}", {KEY: "sk-test"}), ("api_key_env: null", None),
                       (f"api_key_env: {KEY}, serve: {{gguf: smollm2, threads: 1, n_ctx: 2048, parallel: 1}}", None)):
        proc, out = judge_run(tmp_path, judge, env)
        # the first job ran (and failed)
        assert proc.returncode != 0 and ("Error in rule normalise" in out or "Error in rule eval_prompts" in out), out
        assert "is not set" not in out


def test_a_dry_run_needs_no_key(tmp_path):
    proc, out = judge_run(tmp_path, f"api_key_env: {KEY}", dry=True)
    assert proc.returncode == 0, out
    assert "rule judge:" in out and "is not set" not in out


def test_without_the_judge_in_the_run_no_key_is_needed(tmp_path):
    """A target the judge does not feed (here the normalised data) runs without the key."""
    (tmp_path / "bad.jsonl").write_text("not json\n")
    override = (f"data: {{source: files, files: {GARBAGE}}}\nwinrates: {{scorers: [oracle]}}\n"
                f"judge: {{enabled: true, temperatures: [0.9], api_key_env: {KEY}}}\n")
    proc, out = snakemake(tmp_path, override, "results/e2e/data/pairs.parquet", dry=False)
    assert proc.returncode != 0 and "Error in rule normalise" in out and "is not set" not in out
