"""A real SLURM: part of the e2e DAG submitted through sbatch (tests/profiles/slurm-ci) gives the
same outputs as the local run. Needs a running SLURM (as root: `bash .ci/slurm/start.sh`);
without one the tests skip, unless DRDO_REQUIRE_SLURM=1 (CI), where they fail."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from test_workflow import OUT, REPO, snakemake

PROFILE = REPO / "tests" / "profiles" / "slurm-ci"
# synthetic world -> normalise -> base model -> split -> SFT -> reference table -> one DPO align job
TARGET = f"{OUT}/models/dpo-all"
TRAINED = ["sft", "dpo-all"]
pytestmark = [pytest.mark.slurm, pytest.mark.e2e]
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+/rule_(\w+)/\S*?\d+\.log)\)")


def slurm_problem() -> str | None:
    """Why no job could run on this machine's SLURM now, or None when a node is ready."""
    if not shutil.which("sinfo"):
        return "no `sinfo` on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`sinfo` timed out"
    if proc.returncode != 0:
        return f"`sinfo` failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}"
    states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
    if not any(state in ("idle", "mix") for state in states.values()):
        return f"no idle node (sinfo: {states or 'no nodes'})"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = slurm_problem()
    if problem:
        why = f"SLURM is not up: {problem}; start one as root with `bash .ci/slurm/start.sh`"
        if os.environ.get("DRDO_REQUIRE_SLURM") == "1":
            pytest.fail(f"{why} (DRDO_REQUIRE_SLURM=1)")
        pytest.skip(why)


def submitted(proc: subprocess.CompletedProcess) -> dict[str, list[tuple[str, Path]]]:
    """rule -> [(SLURM job id, its SLURM log)], from the executor plugin's submission lines."""
    jobs: dict[str, list[tuple[str, Path]]] = {}
    for jobid, log, rule in SUBMITTED.findall(proc.stdout + proc.stderr):
        jobs.setdefault(rule, []).append((jobid, Path(log)))
    return jobs


def scontrol(jobid: str) -> dict[str, str]:
    """SLURM's own record of a job (kept for MinJobAge after it ends)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True, text=True, check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def job_resources(slurm_log: Path) -> dict[str, str]:
    """The resources the job itself reports (the `resources:` line Snakemake prints in the job)."""
    line = next(ln for ln in slurm_log.read_text().splitlines() if ln.strip().startswith("resources:"))
    return dict(kv.strip().split("=", 1) for kv in line.split(":", 1)[1].split(",") if "=" in kv)


def minutes(limit: str) -> int:
    """SLURM's TimeLimit ([D-]HH:MM:SS) in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + s // 60


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    wd = tmp_path_factory.mktemp("slurm")
    proc = snakemake(wd, f"--profile={PROFILE}", TARGET)
    return wd, proc


@pytest.fixture(scope="module")
def local_run(slurm, tmp_path_factory):
    wd = tmp_path_factory.mktemp("local")
    snakemake(wd, TARGET)
    return wd


def assert_went_through_sbatch(rule: str, jobid: str, slurm_log: Path) -> dict[str, str]:
    assert slurm_log.is_file() and ".snakemake/slurm_logs/rule_" in str(slurm_log)
    text = slurm_log.read_text()
    # the sbatch --wrap ran Snakemake for exactly this rule on the node, through the jobstep executor
    assert f"rule {rule}:" in text and "--executor slurm-jobstep" in text, text[-2000:]
    job = scontrol(jobid)
    assert job["JobState"] == "COMPLETED" and job["Comment"].startswith(f"rule_{rule}")
    assert Path(job["StdOut"]) == slurm_log
    # SLURM granted what the job declared
    res = job_resources(slurm_log)
    assert job["MinMemoryNode"] == f"{res['mem_mb']}M", (job, res)
    assert minutes(job["TimeLimit"]) == int(res["runtime"]), (job, res)
    return job


def test_jobs_went_through_sbatch(slurm_run):
    wd, proc = slurm_run
    jobs = submitted(proc)
    # every torch stage went through sbatch, and no rule marked `localrule: True` did
    assert {"sft", "reference_table", "align"} <= set(jobs), jobs
    assert not {"synthetic_world", "normalise", "split"} & set(jobs), jobs
    assert "localrule synthetic_world:" in proc.stdout + proc.stderr  # ran, here
    for rule, runs in jobs.items():
        for jobid, slurm_log in runs:
            job = assert_went_through_sbatch(rule, jobid, slurm_log)
            assert "gres/gpu" not in job.get("TRES", "") and "gpu" not in job.get("TresPerJob", "")
    assert (wd / TARGET / "model.safetensors").is_file()


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    files = sorted(p.name for p in a.glob("*.safetensors"))
    assert files and files == sorted(p.name for p in b.glob("*.safetensors")), (a, b)
    for name in files:
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys()
        for key in x:
            diff = (x[key].double() - y[key].double()).abs().max().item()
            assert diff <= atol, f"{a / name}: {key} differs by {diff}"


def assert_same_tables(a: Path, b: Path, pattern: str) -> None:
    names = sorted(p.relative_to(a) for p in a.glob(pattern))
    assert names and names == sorted(p.relative_to(b) for p in b.glob(pattern)), (a, b, pattern)
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name),
                                      check_exact=False, rtol=0, atol=1e-6, obj=str(name))


def test_outputs_equal_the_local_run(slurm_run, local_run):
    cluster, local = slurm_run[0] / OUT, local_run / OUT
    for model in ["base", *TRAINED]:
        assert_same_weights(cluster / "models" / model, local / "models" / model, atol=1e-6)
    assert_same_tables(cluster, local, "data/**/*.parquet")
    assert_same_tables(cluster, local, "tables/*.parquet")
    assert_same_tables(cluster, local, "models/*/metrics.parquet")


@pytest.mark.skipif(not (REPO / "workflow" / "drdo" / "launch.py").exists(), reason="needs drdo.launch")
def test_align_on_two_gpus_runs_two_ranks(slurm_run, local_run, tmp_path):
    """resources.align.gpu: 2 -> sbatch asks for 2 GPUs (the node's fake ones) and the launcher
    starts 2 ranks on the CPU (gloo: the e2e config's resources.cpu_ranks), which train the same
    DPO policy as one process."""
    wd = tmp_path / "two-gpus"
    shutil.copytree(slurm_run[0], wd, symlinks=True)  # keeps mtimes: only the forced job re-runs
    proc = snakemake(wd, f"--profile={PROFILE}", "--forcerun=align", TARGET, override="resources: {align: {gpu: 2}}")
    (jobid, slurm_log), = submitted(proc)["align"]
    job = assert_went_through_sbatch("align", jobid, slurm_log)
    assert job_resources(slurm_log)["gpu"] == "2"
    assert re.search(r"gpu[:=]2\b", f"{job.get('TresPerJob', '')} {job.get('TRES', '')}"), job
    log = (wd / OUT / "logs" / "align_dpo-all.log").read_text()
    assert re.search(r"world.size.\D*2", log), log[-2000:]
    # N ranks with micro-batch b/N train what one process with batch b does
    assert_same_weights(wd / TARGET, local_run / TARGET, atol=1e-6)


def test_gpu_job_on_a_node_without_cuda_stops_without_cpu_ranks(slurm_run, tmp_path):
    """The same 2-GPU job without resources.cpu_ranks: SLURM grants the node's 2 fake GPUs, which
    have no CUDA, and the job stops naming its config key and what SLURM granted, instead of
    training on the CPU."""
    wd = tmp_path / "no-cuda"
    shutil.copytree(slurm_run[0], wd, symlinks=True)
    # (mtime only: the other torch jobs' commands lose --cpu-ranks too, and need not re-run for this)
    proc = snakemake(wd, f"--profile={PROFILE}", "--forcerun=align", "--rerun-triggers=mtime", TARGET,
                     override="resources: {align: {gpu: 2}, cpu_ranks: false}", check=False)
    assert proc.returncode != 0
    (jobid, slurm_log), = submitted(proc)["align"]
    assert scontrol(jobid)["JobState"] == "FAILED"
    log = (wd / OUT / "logs" / "align_dpo-all.log").read_text()
    # this SLURM names the granted GPUs in no variable (real clusters set CUDA_VISIBLE_DEVICES)
    assert ("config key resources.align.gpu asks for 2 GPU(s), but no CUDA GPU is visible here "
            "(SLURM granted 2 GPU(s) without naming them)") in log, log[-2000:]
    assert not (wd / TARGET).exists()
