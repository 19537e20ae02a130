"""End-to-end: the whole Snakemake DAG on a small config, in a temporary directory."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from drdo import io

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "configs" / "e2e.yaml"
OUT = "results/e2e"
pytestmark = pytest.mark.e2e


def snakemake(workdir: Path, *args: str, override: str | None = None, check: bool = True,
              configs: tuple[Path, ...] = (CONFIG,)):
    """Run snakemake on the e2e config (or ``configs``), plus an optional YAML ``override`` layered on top."""
    configs = [str(c) for c in configs]
    if override:
        (workdir / "override.yaml").write_text(override)
        configs.append(str(workdir / "override.yaml"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *(a for a in args if a.startswith("-")), "--configfile", *configs,
           "--", *(a for a in args if not a.startswith("-"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> count from the 'Job stats' table of a dry run (empty when nothing to do)."""
    lines = (proc.stdout + proc.stderr).splitlines()
    jobs, inside = {}, False
    for line in lines:
        if line.startswith("job ") and "count" in line:
            inside = True
            continue
        if inside:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("e2e")
    snakemake(wd, f"{OUT}/winrates.csv")
    return wd


def test_winrates_table(workdir):
    w = pd.read_csv(workdir / OUT / "winrates.csv")
    assert list(w.columns) == ["eval_set", "split", "policy_a", "policy_b", "temperature", "scorer",
                               "wins", "ties", "losses", "n", "win_rate", "ci_low", "ci_high", "unfinished_a",
                               "unfinished_b", "n_too_long", "n_dropped"]
    # 3 method pairs + 3 vs SFT + 3 reference-vs-method, per split, eval set, temperature, scorer
    assert len(w) == 9 * 3 * 2 * 2 * 2
    assert set(w["split"]) == {"all", "hc_he", "lc_le"} and set(w["scorer"]) == {"oracle", "gold"}
    assert (w["wins"] + w["ties"] + w["losses"] == w["n"]).all() and (w["n"] == 12).all()
    assert ((w["ci_low"] <= w["win_rate"]) & (w["win_rate"] <= w["ci_high"])).all()
    expected = (w["wins"] + 0.5 * w["ties"]) / w["n"]
    assert (abs(w["win_rate"] - expected) < 1e-3).all()
    # 12 new tokens at most: some responses hit the cap (counted, scored as they are); the reference never
    assert w["unfinished_b"].between(0, 1).all() and (w["unfinished_b"] > 0).any() and (w["n_too_long"] == 0).all()
    assert (w["n_dropped"] == 0).all()  # winrates.unfinished: as_scored
    assert (w.loc[w["policy_a"] == "reference", "unfinished_a"] == 0).all()


def test_the_winrates_target_builds_every_table_of_the_results(workdir):
    """`snakemake <out_dir>/winrates.csv` (the fixture's target) also builds what the results are
    read with: the models' validation metrics and Table 5."""
    validation = pd.read_csv(workdir / OUT / "validation.csv")
    assert len(validation) == 1 + 2 + 9  # Oracle, 2 ensemble members, 9 aligned policies
    assert len(pd.read_csv(workdir / OUT / "data" / "table5.csv")) > 0
    assert set(io.read_provenance(workdir / OUT / "winrates.csv")["inputs"]) == {  # computed from the scores alone
        "sft", "reference", *(f"{m}-{s}" for m in ("drdo", "dpo", "edpo") for s in ("all", "hc_he", "lc_le"))}


def test_artifacts_record_provenance(workdir):
    out = workdir / OUT
    table = io.read_provenance(out / "tables" / "oracle_rewards.parquet")
    assert table["stage"] == "table" and "oracle" in table["inputs"] and table["versions"]["torch"]
    manifest = io.read_provenance(out / "models" / "drdo-hc_he")
    assert manifest["config"]["gamma"] == 2.0 and "validation" in manifest
    assert 0 <= manifest["validation"]["student_reward_acc"] <= 1
    metrics = pd.read_parquet(out / "models" / "drdo-hc_he" / "metrics.parquet")
    assert {"loss", "distill", "focal", "implicit_acc", "logp_chosen", "logp_rejected"} <= set(metrics.columns)
    assert "bayes_optimal_acc" in io.read_provenance(out / "models" / "oracle")["validation"]
    assert leftover_temp_files(out) == []


def leftover_temp_files(out: Path) -> list[Path]:
    """Resume states (``*.tmp`` while written, ``.resume/*`` until training ends) and abandoned
    ``io.atomic_path`` folders (hidden siblings ``.<name>.<random>``)."""
    found = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    found += [p for p in out.rglob(".*") if p.name not in (".resume", ".snakemake_timestamp")]
    resume = out / ".resume"
    return sorted(set(found + (list(resume.iterdir()) if resume.exists() else [])))


def test_leftover_check_sees_abandoned_files(tmp_path):
    (tmp_path / ".resume").mkdir()
    assert leftover_temp_files(tmp_path) == []
    abandoned = tmp_path / "tables" / ".oracle_rewards.parquet.x1y2"
    abandoned.mkdir(parents=True)
    (abandoned / "oracle_rewards.parquet").write_text("half")
    (tmp_path / ".resume" / "sft.pt").write_text("state")
    assert set(leftover_temp_files(tmp_path)) >= {abandoned, tmp_path / ".resume" / "sft.pt"}


def test_second_run_does_nothing(workdir):
    assert planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv")) == {}
    # the same through the local profile
    profile = str(REPO / "workflow" / "profiles" / "local")
    assert planned_jobs(snakemake(workdir, "-n", f"--profile={profile}", f"{OUT}/winrates.csv")) == {}


def test_sft_schedule_bench_reproduces_the_run_and_applies_overrides(workdir):
    """bench/sft_schedules.py: '{}' retrains the run's own SFT policy (same generations, same
    scores), and an override changes the model."""
    run = workdir / OUT
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "sft_schedules.py"), "--run", str(run),
                           "--temperature", "0.9", "{}", '{"max_steps": 1}'],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    own, short = [json.loads(line) for line in proc.stdout.splitlines()]
    gens, scores = io.read_parquet(run / "generations" / "sft.parquet"), io.read_parquet(run / "scores" / "sft.parquet")
    assert own["eos"] == round(float(gens["finished"].mean()), 3)
    at_t = scores[scores["temperature"] == 0.9].groupby("eval_set")["gold"].mean()
    assert {k: own[f"gold_{k}"] for k in at_t.index} == {k: round(float(v), 3) for k, v in at_t.items()}
    assert short["schedule"] == '{"max_steps": 1}' and short["nll_tldr"] != own["nll_tldr"]
    assert all(r["nll_tldr"] > 0 and r["nll_news"] > 0 for r in (own, short))


def test_logp_shift_bench_agrees_with_the_trainers_validation(workdir, tmp_path):
    """bench/logp_shift.py scores the validation pairs through the table stage; the trainer's own
    validation pass (another code path) must give the same accuracies and DPO/e-DPO margins."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "shift.csv"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "logp_shift.py"), "--run", OUT, "--csv", str(out)],
                          capture_output=True, text=True, env=env, cwd=workdir, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shift = pd.read_csv(out)
    splits = ("all", "hc_he", "lc_le")
    assert sorted(shift["policy"]) == sorted(f"{m}-{s}" for m in ("drdo", "dpo", "edpo") for s in splits)
    for row in shift.itertuples():
        manifest = io.read_provenance(workdir / OUT / "models" / row.policy)
        val, one_pair = manifest["validation"], 1 / row.pairs + 1e-9  # a near-tie may round either way
        if row.method == "drdo":  # its implicit accuracy is the policy's own: log pi(y_w) > log pi(y_l)
            assert abs(row.policy_acc - val["implicit_acc"]) <= one_pair
        else:  # beta * [(pi_w - ref_w) - (pi_l - ref_l)]
            assert abs(row.margin_grew - val["implicit_acc"]) <= one_pair
            assert row.d_margin * manifest["config"]["beta"] == pytest.approx(val["implicit_margin"], abs=1e-3)
        assert row.d_chosen_lo <= row.d_chosen <= row.d_chosen_hi and row.pairs > 1
    assert len(proc.stdout.splitlines()) == len(shift) + 2  # header, separator, a line per policy


def test_gamma_change_reruns_only_drdo(workdir):
    jobs = planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv", override="align: {drdo: {gamma: 1.0}}"))
    assert jobs == {"align": 3, "generate": 3, "score_policy": 3, "validation_report": 1, "winrates": 1}


def test_resume_settings_rerun_nothing(workdir, tmp_path):
    """Where and how often training jobs keep their resume state changes no artifact."""
    override = f"train: {{save_every: 7}}\nalign: {{common: {{save_every: 3}}}}\nresume_dir: {tmp_path / 'scratch'}\n"
    assert planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv", override=override)) == {}
    forced = snakemake(workdir, "-n", "-p", "--forcerun=align", f"{OUT}/models/drdo-all", override=override)
    assert f"--resume {tmp_path / 'scratch'}" in forced.stdout and "--save-every 3" in forced.stdout


def test_version_mismatch_setting_reruns_nothing(workdir):
    """version_mismatch decides whether a job goes on, not what it makes: switching it re-runs
    nothing, and the jobs that do run get it."""
    assert planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv", override="version_mismatch: warn")) == {}
    forced = snakemake(workdir, "-n", "-p", "--forcerun=align", f"{OUT}/models/drdo-all", override="version_mismatch: warn")
    assert "--version-mismatch warn" in forced.stdout


@pytest.mark.parametrize("override", [
    "split: {seed: 5}",          # draws only a max_validation sample; there is none (null)
    "model: {dtype: bfloat16}",  # a pretrained model's dtype: the tiny model has none
])
def test_keys_the_jobs_do_not_read_rerun_nothing(workdir, override):
    assert planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv", override=override)) == {}


def test_ensemble_size_change_trains_only_the_new_member(workdir):
    jobs = planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv", override="ensemble: {size: 3}"))
    assert jobs == {"reward_model": 1, "ensemble_table": 1, "align": 3, "generate": 3, "score_policy": 3,
                    "validation_report": 1, "winrates": 1}


def test_a_run_without_edpo_trains_no_ensemble(workdir):
    """The ensemble members are trained only for a method that reads their rewards."""
    override = "synthetic: {seed: 7}\nalign: {methods: [drdo, dpo]}"
    jobs = planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv", override=override))
    assert jobs["align"] == 6 and jobs["oracle"] == 1 and jobs["validation_report"] == 1
    assert "reward_model" not in jobs and "ensemble_table" not in jobs


def test_attention_kernel_change_reruns_exactly_the_jobs_that_run_models(workdir):
    """model.attn_implementation: every training, table, generation and scoring job (and what reads
    them); not the data stages, nor the base model, whose checkpoint does not record the kernel."""
    jobs = planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv", override="model: {attn_implementation: eager}"))
    assert jobs == {"sft": 1, "oracle": 1, "reward_model": 2, "oracle_table": 1, "ensemble_table": 1,
                    "reference_table": 1, "align": 9, "generate": 10, "score_policy": 10, "score_reference": 1,
                    "validation_report": 1, "winrates": 1}


@pytest.mark.parametrize("override", ["eval: {n_tldr: 6}", "eval: {seed: 3}"])
def test_eval_sample_change_reruns_only_what_reads_the_prompts(workdir, override):
    """Which prompts are evaluated (eval.*) is the eval_prompts job's alone: generation, scoring
    (the reference's too) and the win-rates re-run; no data, training or table job."""
    jobs = planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv", override=override))
    assert jobs == {"eval_prompts": 1, "generate": 10, "score_policy": 10, "score_reference": 1, "winrates": 1}


def test_seed_change_reruns_everything(workdir):
    jobs = planned_jobs(snakemake(workdir, "-n", f"{OUT}/winrates.csv", override="synthetic: {seed: 7}"))
    assert jobs["synthetic_world"] == 1 and jobs["align"] == 9 and jobs["reward_model"] == 2
    assert jobs["normalise"] == 1 and jobs["eval_prompts"] == 1
    assert sum(jobs.values()) == 1 + 1 + 1 + 1 + 1 + 1 + 1 + 2 + 3 + 9 + 10 + 11 + 1 + 1  # + validation_report


@pytest.mark.parametrize("override, key", [
    ("align: {drdo: {gamma: -1}}", "gamma"),
    ("sft: {alpha: 1}", "alpha"),              # a key of another section: not silently ignored
    ("align: {dpo: {gamma: 2.0}}", "gamma"),
    ("lengths: {max_length: 100}", "lengths.max_length"),
    ("{data: {source: hub}, winrates: {scorers: [oracle]}}", "data.hub"),
    ("oracle: {base: gguf:smollm2}", "oracle.base"),
    ("align: {methods: [drdo, drdo_x]}", "align.drdo_x"),  # a named method needs its section
    ("align: {methods: [drdo, d2], d2: {base: dpo, gamma: 1.0}}", "gamma"),  # only its base's keys
    ("align: {rdpo: {epsilon: 0.5}}", "epsilon"),
    ("winrates: {unfinished: ignore}", "unfinished"),
    # the section that set it, not train's
    ("align: {dpo: {deepspeed: config/deepspeed/nope.json}}", "config key align.dpo.deepspeed: cannot read"),
    ("align: {methods: [drdo, d3], d3: {base: dpo, deepspeed: nope.json}}", "config key align.d3.deepspeed: cannot read"),
    ("align: {methods: [drdo, d4], d4: {base: drdo, gamma: -1}}", "config key align.d4.gamma: -1 is less than the minimum of 0"),
    ("model: {name_or_path: ./models/my-llama}", "config key model.name_or_path: './models/my-llama' names a local "
                                                 "directory, and there is none"),
    ("oracle: {base: /nowhere/my-oracle}", "config key oracle.base: '/nowhere/my-oracle' names a local directory"),
])
def test_bad_config_stops_before_any_job(tmp_path, override, key):
    proc = snakemake(tmp_path, "-n", override=override, check=False)
    assert proc.returncode != 0
    assert key in proc.stdout + proc.stderr
    assert not (tmp_path / OUT).exists()


def test_user_files_in_the_real_schemas(workdir):
    """data.source: files reads local files in the real datasets' schemas (here the e2e world's)."""
    raw = workdir / OUT / "raw"
    override = f"""out_dir: results/e2e-files
data:
  source: files
  files: {{comparisons: {raw}/comparisons.jsonl, sft_train: {raw}/sft_train.jsonl,
           sft_test: {raw}/sft_test.jsonl, news: {raw}/news_test.jsonl}}
winrates: {{scorers: [oracle]}}
"""
    proc = snakemake(workdir, "-n", "results/e2e-files/winrates.csv", override=override)
    jobs = planned_jobs(proc)
    assert "synthetic_world" not in jobs and jobs["normalise"] == 1 and jobs["eval_prompts"] == 1
    snakemake(workdir, "results/e2e-files/data/table5.csv", override=override)
    # the same raw files through the files path give the same splits as the synthetic path
    pd.testing.assert_frame_equal(pd.read_csv(workdir / "results/e2e-files/data/table5.csv"),
                                  pd.read_csv(workdir / OUT / "data" / "table5.csv"))
    bad = snakemake(workdir, "-n", "results/e2e-files/winrates.csv", override=override.replace("[oracle]", "[oracle, gold]"),
                    check=False)
    assert bad.returncode != 0 and "winrates.scorers" in bad.stdout + bad.stderr


def _copy_of_repo(dest: Path) -> Path:
    """The workflow's own files (Snakefile, workflow/, config/) in ``dest``, to edit its code."""
    dest.mkdir()
    for part in ("Snakefile", "workflow", "config"):
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    (dest / "README.md").write_text("# a copy\n")
    return dest


def _plan_with(workdir: Path, snakefile: Path) -> dict[str, int]:
    return planned_jobs(snakemake(workdir, "-n", f"--snakefile={snakefile}", f"{OUT}/winrates.csv"))


def test_code_changes_rerun_exactly_the_stages_that_run_that_code(workdir, tmp_path):
    repo = _copy_of_repo(tmp_path / "repo")
    assert _plan_with(workdir, repo / "Snakefile") == {}  # same code, elsewhere: nothing to do
    (repo / "README.md").write_text("# edited\n")
    assert _plan_with(workdir, repo / "Snakefile") == {}

    generation = repo / "workflow" / "drdo" / "generation.py"
    generation.write_text(generation.read_text() + "\n# an edit\n")
    assert _plan_with(workdir, repo / "Snakefile") == {"generate": 10, "score_policy": 10, "winrates": 1}
    shutil.copy2(REPO / "workflow" / "drdo" / "generation.py", generation)

    losses = repo / "workflow" / "drdo" / "losses.py"
    losses.write_text(losses.read_text() + "\n# an edit\n")
    jobs = _plan_with(workdir, repo / "Snakefile")
    # every job that trains with these losses, and all that follows; no data stage
    assert jobs["align"] == 9 and jobs["generate"] == 10 and jobs["score_policy"] == 10 and jobs["winrates"] == 1
    assert not {"synthetic_world", "normalise", "eval_prompts", "split", "base_model"} & jobs.keys()


def test_config_change_after_failed_jobs_rebuilds_every_stale_artifact(workdir, tmp_path):
    """Change a DRDO key; two of the three DRDO align jobs fail (Snakemake deletes their
    outputs), the third succeeds; the rerun must rebuild every DRDO artifact, not mix the old
    scores of the two failed policies into the new win-rates."""
    wd = tmp_path / "wd"
    shutil.copytree(workdir, wd, symlinks=True)
    override = "align: {drdo: {logp_agg: mean}}"
    snakemake(wd, f"{OUT}/models/drdo-all", override=override)
    for failed in ("drdo-hc_he", "drdo-lc_le"):
        shutil.rmtree(wd / OUT / "models" / failed)
    jobs = planned_jobs(snakemake(wd, "-n", f"{OUT}/winrates.csv", override=override))
    assert jobs == {"align": 2, "generate": 3, "score_policy": 3, "validation_report": 1, "winrates": 1}
    snakemake(wd, f"{OUT}/winrates.csv", override=override)
    expected = io.read_provenance(wd / OUT / "winrates.csv")
    for split in ("all", "hc_he", "lc_le"):
        model = io.read_provenance(wd / OUT / "models" / f"drdo-{split}")
        assert model["config"]["logp_agg"] == "mean"
        gen = io.read_provenance(wd / OUT / "generations" / f"drdo-{split}.parquet")
        assert gen["inputs"]["policy"]["sha256"] == io.file_hash(wd / OUT / "models" / f"drdo-{split}")
        score = io.read_provenance(wd / OUT / "scores" / f"drdo-{split}.parquet")
        assert score["inputs"]["generations"]["sha256"] == io.file_hash(wd / OUT / "generations" / f"drdo-{split}.parquet")
        assert expected["inputs"][f"drdo-{split}"]["sha256"] == io.file_hash(wd / OUT / "scores" / f"drdo-{split}.parquet")
    assert planned_jobs(snakemake(wd, "-n", f"{OUT}/winrates.csv", override=override)) == {}
