"""Each job gets GPUs of its own (drdo.gpus, through drdo.launch), and a job that asks for GPUs
never runs on the CPU unless its config says so (resources.cpu_ranks). On a machine without
GPUs: the device lists are fake, the locks, the launcher and its exec are real."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from drdo import gpus

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'workflow'}:{os.environ.get('PYTHONPATH', '')}"}

# The launcher on a fake machine whose GPUs are those CUDA_VISIBLE_DEVICES names (UUID card-<name>);
# the job it execs (instead of python -m drdo) records the GPUs it was given, checks that their locks
# are still held after the exec, holds them HOLD_S seconds and records when it ends.
PROBE = """
import fcntl, json, os, sys, time
record, hold, lock_dir = sys.argv[1], float(sys.argv[2]), sys.argv[3]
names = [n for n in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if n]
held = []
for name in names:
    fd = os.open(os.path.join(lock_dir, f"card-{name}.lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(False)
    except BlockingIOError:
        held.append(True)
start = time.time()
time.sleep(hold)
with open(record, "w") as fh:
    json.dump({"gpus": names, "locked": held, "start": start, "end": time.time(), "pid": os.getpid()}, fh)
"""
LAUNCHER = f"""
import os, sys
from drdo import gpus, launch
gpus.visible_gpus = lambda: [gpus.Gpu(n, f"card-{{n}}") for n in gpus.parse_visible(os.environ["CUDA_VISIBLE_DEVICES"])]
launch.command = lambda processes, threads, args, **_: ([sys.executable, "-c", {PROBE!r}, *args], {{}})
launch.main(sys.argv[1:])
"""


def test_visible_gpus_follow_cuda_visible_devices():
    assert gpus.parse_visible(None) is None  # unset: every GPU
    assert gpus.parse_visible("0,2") == ["0", "2"]
    assert gpus.parse_visible("GPU-8a1f,GPU-77c2") == ["GPU-8a1f", "GPU-77c2"]
    assert gpus.parse_visible("") == [] and gpus.parse_visible("-1") == []
    assert gpus.parse_visible("1,-1,0") == ["1"]  # CUDA stops at the first entry it cannot use
    uuid = {0: "u-a", 1: "u-b", 2: "u-c"}.__getitem__
    assert gpus.visible(None, 3, uuid) == [gpus.Gpu("0", "u-a"), gpus.Gpu("1", "u-b"), gpus.Gpu("2", "u-c")]
    # what SLURM (or a user) set: those names, CUDA's devices 0.. in that order
    assert gpus.visible("2,3", 2, uuid) == [gpus.Gpu("2", "u-a"), gpus.Gpu("3", "u-b")]
    assert gpus.visible("0,1,5", 2, uuid) == [gpus.Gpu("0", "u-a"), gpus.Gpu("1", "u-b")]  # 5 does not exist
    assert gpus.visible("0,1", 0, uuid) == []  # no CUDA
    assert gpus.visible("3", 1, lambda i: "") == [gpus.Gpu("3", "device-3")]  # a torch that gives no UUID


def test_shortfall_names_the_config_key_and_what_was_found():
    two = [gpus.Gpu("0", "a"), gpus.Gpu("1", "b")]
    assert gpus.shortfall("resources.align.gpu", 2, two, "x") is None
    none = gpus.shortfall("resources.align.gpu", 2, [], gpus.seen({}))
    assert ("config key resources.align.gpu asks for 2 GPU(s), but no CUDA GPU is visible here "
            "(CUDA_VISIBLE_DEVICES unset: every GPU of the machine)") in none and "cpu_ranks" in none
    few = gpus.shortfall("resources.sft.gpu", 4, two, gpus.seen({"CUDA_VISIBLE_DEVICES": "0,1"}))
    assert "resources.sft.gpu asks for 4 GPUs, but the job sees only 2 (0, 1; CUDA_VISIBLE_DEVICES '0,1')" in few


def test_under_slurm_only_the_granted_gpus_are_visible():
    # SLURM sets CUDA_VISIBLE_DEVICES on most clusters: it is kept as it is
    assert gpus.slurm_granted({"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_GPUS": "2,3"}) is None
    # where it named the GPUs only in its own variables, those become the visible ones
    assert gpus.slurm_granted({"SLURM_JOB_GPUS": "2,3"}) == "2,3"
    assert gpus.slurm_granted({"SLURM_STEP_GPUS": "3", "SLURM_JOB_GPUS": "2,3"}) == "3"
    assert gpus.slurm_granted({}) is None
    assert gpus.seen({"SLURM_GPUS_ON_NODE": "2"}) == "SLURM granted 2 GPU(s) without naming them"


def test_locks_give_disjoint_gpus_and_all_or_nothing(tmp_path):
    machine = [gpus.Gpu(str(i), f"card-{i}") for i in range(3)]
    first = gpus.try_take(machine, 2, tmp_path, "pid 1 (rule oracle)")
    assert [g.name for g in first] == ["0", "1"]
    assert gpus.try_take(machine, 2, tmp_path, "pid 2") is None  # one free: takes nothing
    assert gpus.holders(machine, tmp_path) == {"0": "pid 1 (rule oracle)", "1": "pid 1 (rule oracle)"}
    second = gpus.try_take(machine, 1, tmp_path, "pid 3")
    assert [g.name for g in second] == ["2"]  # the one the failed attempt did not keep
    # under SLURM each job's GPUs may be numbered from 0: the card (UUID), not the number, is locked
    assert gpus.try_take([gpus.Gpu("0", "card-other-job")], 1, tmp_path, "pid 4") is not None
    for fd in first.values():
        os.close(fd)
    assert [g.name for g in gpus.try_take(machine, 2, tmp_path, "pid 5")] == ["0", "1"]


def _launch(tmp_path: Path, name: str, processes: int, hold_s: float, rule: str = "align", **visible: str):
    """The launcher on a fake machine; ``visible``: CUDA_VISIBLE_DEVICES (default 0,1,2) or SLURM's variables."""
    env = {k: v for k, v in ENV.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")}
    env |= {**(visible or {"CUDA_VISIBLE_DEVICES": "0,1,2"}), gpus.LOCK_DIR_ENV: str(tmp_path / "locks")}
    cmd = [sys.executable, "-c", LAUNCHER, "--rule", rule, "--processes", str(processes), "--threads", "1", "--",
           str(tmp_path / f"{name}.json"), str(hold_s), str(tmp_path / "locks")]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_launchers_get_disjoint_gpus_and_wait_for_busy_ones(tmp_path):
    """A fake machine with 3 GPUs: jobs of 2 and 1 GPUs start together on disjoint GPUs; a third job
    of 2 waits until the first ends (its locks outlive the launcher's exec into the job), then takes
    them; a job of 4 fails at once."""
    (tmp_path / "locks").mkdir()
    a = _launch(tmp_path, "a", 2, hold_s=6)
    b = _launch(tmp_path, "b", 1, hold_s=10)
    too_many = _launch(tmp_path, "d", 4, hold_s=0)
    _, err = too_many.communicate(timeout=120)
    assert too_many.returncode == 1
    assert "resources.align.gpu asks for 4 GPUs, but the job sees only 3" in err
    assert not (tmp_path / "d.json").exists()
    # c starts once a and b hold their GPUs: c's launcher finds too few free
    deadline = time.monotonic() + 120
    while len(gpus.holders([gpus.Gpu(n, f"card-{n}") for n in "012"], tmp_path / "locks")) < 3:
        assert a.poll() is None and b.poll() is None, (a.communicate(), b.communicate())
        assert time.monotonic() < deadline, "a and b never held their GPUs"
        time.sleep(0.05)
    c = _launch(tmp_path, "c", 2, hold_s=0)
    outs = {name: proc.communicate(timeout=180) for name, proc in (("a", a), ("b", b), ("c", c))}
    for name, proc in (("a", a), ("b", b), ("c", c)):
        assert proc.returncode == 0, outs[name]
    runs = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in "abc"}
    assert len(runs["a"]["gpus"]) == 2 and len(runs["b"]["gpus"]) == 1 and len(runs["c"]["gpus"]) == 2
    assert set(runs["a"]["gpus"]) | set(runs["b"]["gpus"]) == {"0", "1", "2"}  # disjoint, together
    for run in runs.values():
        assert all(run["locked"]), run  # the job (after exec) still holds every GPU it was given
    # c ran on a's GPUs, after a ended and while b still ran
    assert set(runs["c"]["gpus"]) == set(runs["a"]["gpus"])
    assert runs["a"]["end"] <= runs["c"]["start"] <= runs["b"]["end"]
    err_c = outs["c"][1]
    assert "waiting for 2 free GPU(s) of 3 visible" in err_c and f"pid {runs['a']['pid']} (rule align)" in err_c
    assert f"GPUs {','.join(runs['c']['gpus'])} of 0, 1, 2 visible" in err_c


def test_a_slurm_job_takes_the_gpus_slurm_granted(tmp_path):
    job = _launch(tmp_path, "s", 2, hold_s=0, SLURM_JOB_GPUS="2,3")
    _, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    assert json.loads((tmp_path / "s.json").read_text())["gpus"] == ["2", "3"]


def test_gpu_job_without_cuda_stops_unless_cpu_ranks(tmp_path):
    """The real launcher where no GPU is visible: a GPU job stops, naming its config key; with the
    opt-in it starts its stage on the CPU."""
    env = {**ENV, "CUDA_VISIBLE_DEVICES": "", gpus.LOCK_DIR_ENV: str(tmp_path / "locks")}
    cmd = [sys.executable, "-m", "drdo.launch", "--rule", "generate", "--processes", "1", "--threads", "1"]
    stage = ["--", "generate", "--help"]
    proc = subprocess.run([*cmd, *stage], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "config key resources.generate.gpu asks for 1 GPU(s), but no CUDA GPU is visible" in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith("launch: ")]  # nothing started
    proc = subprocess.run([*cmd, "--cpu-ranks", *stage], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
    assert "drdo.launch:" not in proc.stderr and "-m drdo --threads 1 generate --help" in proc.stderr


def test_launch_skips_every_valued_option_of_drdo_to_find_the_stage():
    """drdo.launch finds the stage as the first word that is no option or option value: every
    top-level option of ``python -m drdo`` that takes a value must be in launch.VALUED."""
    import argparse

    from drdo import cli, launch

    valued = {s for a in cli._parser()._actions if a.option_strings and a.nargs != 0
              and not isinstance(a, argparse._SubParsersAction) for s in a.option_strings if s.startswith("--")}
    assert valued == set(launch.VALUED)
    args = ["--threads", "1", "--lineage", "x", "--expect-lineage", "{}", "--version-mismatch", "warn", "train", "--out", "o"]
    assert launch._stage(args) == "train"
