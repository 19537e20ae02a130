"""Start a stage on the devices its rule asked for, so every Snakemake rule calls the same thing
whatever its resources:

    python -m drdo.launch --rule R --processes N --threads T [--cpu-ranks] -- <arguments of python -m drdo>

N = 0: one process on the CPU (CUDA hidden). N >= 1: one rank per GPU (N > 1: training only) on
N GPUs that the job takes among those visible to it and no other job on this machine holds
(``drdo.gpus``); no CUDA, or fewer GPUs visible than N, is an error naming ``resources.R.gpu``,
never a silent run on the CPU. ``--cpu-ranks`` (the config's ``resources.cpu_ranks``) runs the N
ranks on the CPU instead, over gloo, CUDA hidden: for tests and CI on machines without GPUs.

One process runs ``python -m drdo`` itself. N > 1 runs ``accelerate launch`` with N processes on a
free port: ``--use_deepspeed`` when the stage's ``--params`` name a DeepSpeed config
(``train.deepspeed``), plain DDP otherwise. T threads are split evenly over the ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from . import gpus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# python -m drdo's options that take a value (a test checks this against its parser)
VALUED = ("--threads", "--lineage", "--expect-lineage", "--version-mismatch")
# glibc's malloc returns large freed blocks to the OS at once (mmap above ~32 MB, trimming the
# heap top), so a CPU job that allocates and frees the same large tensors every step (a KV cache
# that grows by concatenation, activations) page-faults them in anew each time: generation spent
# 40% of its time in the kernel. Keep up to 1 GiB of freed memory for reuse; a user's own
# setting wins. (Other C libraries ignore these.) GPU jobs keep glibc's defaults.
CPU_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
# MKL (torch's CPU BLAS) does not promise the same float32 rounding from run to run (its
# documentation names memory alignment and threading): in one series, 18 identical one-process
# training runs ended with 5 different sets of weights, up to 2.8e-5 apart; later series were all
# equal, so what switches it is not known (Intel Xeon, 2026-12-07; bench/cpu_reproducibility.py).
# Its strict mode makes a CPU job bit-for-bit reproducible at a given thread count (every run equal
# in every series). A user's setting wins.
CPU_REPRODUCIBLE = {"MKL_CBWR": "AUTO,STRICT"}


def cpu_job_env(environ=os.environ) -> dict:
    """What a CPU job's environment gets on top of ``environ``: the settings above it does not set."""
    return {k: v for k, v in (CPU_MALLOC | CPU_REPRODUCIBLE).items() if k not in environ}


def _stage(args: list[str]) -> str | None:
    """The stage named in ``python -m drdo`` arguments (the first word not an option or its value)."""
    i = 0
    while i < len(args):
        if args[i] in VALUED:
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            return args[i]
    return None


def command(processes: int, threads: int, args: list[str], cpu: bool = False,
            rule: str = "<rule>") -> tuple[list[str], dict]:
    """The command line and extra environment that run ``python -m drdo ARGS`` on ``processes``
    ranks: on the CPU when ``cpu`` or ``processes`` is 0 (CUDA hidden), else on GPUs."""
    per_rank = max(1, threads // max(1, processes))
    drdo = ["--threads", str(per_rank), *args]
    env = {"OMP_NUM_THREADS": str(per_rank)}
    if cpu or processes == 0:
        env |= {"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}
        env |= cpu_job_env()
    if processes <= 1:
        return [sys.executable, "-m", "drdo", *drdo], env
    stage = _stage(args)
    if stage != "train":
        raise ValueError(f"stage {stage!r} runs on one process; set config key resources.{rule}.gpu to 0 or 1")
    params = json.loads(args[args.index("--params") + 1]) if "--params" in args else {}
    mode = ["--use_deepspeed"] if params.get("deepspeed") else ["--multi_gpu"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", str(processes),
                "--num_machines", "1", "--main_process_port", str(free_port()),
                "--mixed_precision", "no", "--dynamo_backend", "no"]  # the trainer sets precision itself
    return [*launcher, "-m", "drdo", *drdo], env


def _say(message: str) -> None:
    print("launch:", message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="drdo.launch", description=__doc__.split("\n")[0])
    ap.add_argument("--processes", type=int, default=0, help="the job's GPUs, one rank each; 0: one process on the CPU")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of the whole job")
    ap.add_argument("--rule", default="<rule>", help="the job's rule: errors name its config key resources.<rule>.gpu")
    ap.add_argument("--cpu-ranks", action="store_true",
                    help="run the --processes ranks on the CPU (gloo), CUDA hidden: tests and CI without GPUs")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the arguments of python -m drdo")
    a = ap.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    try:
        cmd, env = command(a.processes, a.threads, args, cpu=a.cpu_ranks, rule=a.rule)
    except ValueError as e:
        raise SystemExit(f"drdo.launch: {e}") from None
    if a.processes >= 1 and not a.cpu_ranks:
        if granted := gpus.slurm_granted(os.environ):  # before CUDA starts: only those are the job's
            os.environ["CUDA_VISIBLE_DEVICES"] = granted
        visible = gpus.visible_gpus()
        problem = gpus.shortfall(f"resources.{a.rule}.gpu", a.processes, visible, gpus.seen(os.environ))
        if problem:
            raise SystemExit(f"drdo.launch: {problem}")
        # held through the exec below (inheritable descriptors): freed when the job's process ends
        held = gpus.take(visible, a.processes, f"pid {os.getpid()} (rule {a.rule})", _say)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(g.name for g in held)
        _say(f"GPUs {env['CUDA_VISIBLE_DEVICES']} of {', '.join(g.name for g in visible)} visible")
    _say(" ".join(cmd))
    os.execvpe(cmd[0], cmd, {**os.environ, **env})


if __name__ == "__main__":
    main()
