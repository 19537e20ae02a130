"""The GPUs a job runs on: N of those visible to it that no other job on this machine holds.

Visible: the GPUs CUDA_VISIBLE_DEVICES names, as SLURM (a job's granted GPUs) or the user set it
(SLURM_STEP_GPUS / SLURM_JOB_GPUS where SLURM named the granted GPUs only there); every GPU of the
machine otherwise. A job holds a GPU by an exclusive ``flock`` on
``<lock dir>/<GPU UUID>.lock`` (``DRDO_GPU_LOCK_DIR``, else ``/tmp/drdo-gpus-<uid>``: per user,
per machine). Locks are named by UUID, not by number: SLURM renumbers each job's GPUs from 0
when it confines devices, so "0" is another card in each job, while the UUID is the card itself.

The launcher takes the locks, keeps their files open (inheritable) through its ``exec`` into the
job's command, and so holds them exactly as long as the job's process lives: a crash, a kill or
a cancelled SLURM job frees them, with no file to clean up. While fewer than N visible GPUs are
free the launcher waits (another run on the same machine holds them, and frees them when its
jobs end); a job that asks for more GPUs than are visible fails at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_DIR_ENV = "DRDO_GPU_LOCK_DIR"


@dataclass(frozen=True)
class Gpu:
    name: str  # as the job's CUDA_VISIBLE_DEVICES names it (a number or a UUID)
    uuid: str  # the card itself: its lock's name


def parse_visible(value: str | None) -> list[str] | None:
    """The GPUs a CUDA_VISIBLE_DEVICES value names, in order; None when it is unset (all).

    CUDA stops at the first entry it cannot use, so "-1" (or "") hides every GPU and "0,-1,1"
    shows only GPU 0."""
    if value is None:
        return None
    names = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        names.append(entry)
    return names


def visible(env_value: str | None, count: int, uuid_of) -> list[Gpu]:
    """The ``count`` GPUs CUDA shows a process whose CUDA_VISIBLE_DEVICES is ``env_value``, named as
    that value names them (0..count-1 when unset); ``uuid_of(i)``: the UUID of CUDA's device i
    ("" where torch cannot tell: the name stands in)."""
    names = parse_visible(env_value)
    names = (names if names is not None else [str(i) for i in range(count)])[:count]
    return [Gpu(name, uuid_of(i) or f"device-{name}") for i, name in enumerate(names)]


def slurm_granted(environ) -> str | None:
    """The GPUs SLURM granted this job (SLURM_STEP_GPUS, else SLURM_JOB_GPUS: node indices) where
    it did not also set CUDA_VISIBLE_DEVICES to them (it does on most clusters); else None."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return None
    return environ.get("SLURM_STEP_GPUS") or environ.get("SLURM_JOB_GPUS") or None


def seen(environ) -> str:
    """Where the visible GPUs come from, for messages."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return f"CUDA_VISIBLE_DEVICES {environ['CUDA_VISIBLE_DEVICES']!r}"
    if environ.get("SLURM_GPUS_ON_NODE"):
        return f"SLURM granted {environ['SLURM_GPUS_ON_NODE']} GPU(s) without naming them"
    return "CUDA_VISIBLE_DEVICES unset: every GPU of the machine"


def visible_gpus() -> list[Gpu]:
    """The GPUs this process may use; empty without CUDA."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return visible(os.environ.get("CUDA_VISIBLE_DEVICES"), count,
                   lambda i: str(getattr(torch.cuda.get_device_properties(i), "uuid", "")))


def shortfall(key: str, wanted: int, gpus: list[Gpu], where: str) -> str | None:
    """Why a job asking for ``wanted`` GPUs (config key ``key``) cannot run on ``gpus`` (visible as
    ``where`` says: :func:`seen`); None if it can."""
    fix = (f"set {key} to 0 to run the job on the CPU, or resources.cpu_ranks: true to run its ranks on "
           "the CPU (gloo; for tests and CI)")
    if not gpus:
        return f"config key {key} asks for {wanted} GPU(s), but no CUDA GPU is visible here ({where}): {fix}"
    if wanted > len(gpus):
        return (f"config key {key} asks for {wanted} GPUs, but the job sees only {len(gpus)} "
                f"({', '.join(g.name for g in gpus)}; {where}): lower {key}, or give the job more GPUs "
                "(under SLURM the job sees the GPUs it was granted)")
    return None


def lock_dir() -> Path:
    """The folder of the GPU locks (created private to this user)."""
    path = Path(os.environ.get(LOCK_DIR_ENV) or f"/tmp/drdo-gpus-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} (the GPU lock folder) belongs to another user: set {LOCK_DIR_ENV}")
    return path


def _lock_file(directory: Path, gpu: Gpu) -> Path:
    return directory / (re.sub(r"[^A-Za-z0-9._-]", "_", gpu.uuid) + ".lock")


def _open_locked(path: Path, blocking: bool = False) -> int | None:
    """A descriptor of ``path`` holding its exclusive lock, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _one_taker(directory: Path):
    """One launcher at a time takes GPUs or looks at who holds them: two jobs that each took one
    of the last two free GPUs would both give up and could repeat that forever, and a look that
    locked a free GPU for a moment would make a taker pass it by."""
    guard = _open_locked(directory / "assign.lock", blocking=True)
    try:
        yield
    finally:
        os.close(guard)


def try_take(gpus: list[Gpu], n: int, directory: Path, holder: str) -> dict[Gpu, int] | None:
    """Locks on the first ``n`` of ``gpus`` that no one holds ({gpu: descriptor}), each file
    stamped with ``holder``; None, holding nothing, when fewer than ``n`` are free."""
    with _one_taker(directory):
        taken: dict[Gpu, int] = {}
        for gpu in gpus:
            if len(taken) == n:
                break
            fd = _open_locked(_lock_file(directory, gpu))
            if fd is not None:
                taken[gpu] = fd
        if len(taken) < n:
            for fd in taken.values():
                os.close(fd)
            return None
        for fd in taken.values():
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        return taken


def holders(gpus: list[Gpu], directory: Path) -> dict[str, str]:
    """GPU name -> what its lock file says holds it (pid and rule), for the GPUs now held."""
    held = {}
    with _one_taker(directory):
        for gpu in gpus:
            path = _lock_file(directory, gpu)
            fd = _open_locked(path) if path.exists() else -1
            if fd is None:
                held[gpu.name] = path.read_text().strip() or "another job"
            elif fd >= 0:
                os.close(fd)
    return held


def take(gpus: list[Gpu], n: int, holder: str, say, poll_s: float = 2.0) -> dict[Gpu, int]:
    """Locks on ``n`` free GPUs of ``gpus``, waiting while fewer are free (``say`` reports it).
    The descriptors are inheritable: the caller keeps them open through ``exec``."""
    directory = lock_dir()
    start, told = time.monotonic(), False
    while (taken := try_take(gpus, n, directory, holder)) is None:
        if not told:
            busy = "; ".join(f"GPU {name}: {who}" for name, who in holders(gpus, directory).items())
            say(f"waiting for {n} free GPU(s) of {len(gpus)} visible (held: {busy or 'being taken'}; "
                f"locks in {directory})")
            told = True
        time.sleep(poll_s)
    for fd in taken.values():
        os.set_inheritable(fd, True)
    if told:
        say(f"waited {time.monotonic() - start:.0f} s for GPUs")
    return taken
