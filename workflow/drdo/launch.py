"""Start a stage on one process, or on N ranks for training (one per GPU; N CPU ranks over gloo
when there is no CUDA), so every Snakemake rule calls the same thing whatever its resources:

    python -m drdo.launch --processes N --threads T -- <arguments of python -m drdo>

N <= 1 runs ``python -m drdo`` itself. N > 1 runs ``accelerate launch`` with N processes on a
free port: ``--use_deepspeed`` when the stage's ``--params`` name a DeepSpeed config
(``train.deepspeed``), plain DDP otherwise. T threads are split evenly over the ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


VALUED = ("--threads", "--lineage", "--expect-lineage")  # python -m drdo's options that take a value
# glibc's malloc returns large freed blocks to the OS at once (mmap above ~32 MB, trimming the
# heap top), so a CPU job that allocates and frees the same large tensors every step (a KV cache
# that grows by concatenation, activations) page-faults them in anew each time: generation spent
# 40% of its time in the kernel. Keep up to 1 GiB of freed memory for reuse; a user's own
# setting wins. (Other C libraries ignore these.) GPU jobs keep glibc's defaults.
CPU_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


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


def command(processes: int, threads: int, args: list[str]) -> tuple[list[str], dict]:
    """The command line and extra environment that run ``python -m drdo ARGS`` on ``processes`` ranks."""
    per_rank = max(1, threads // max(1, processes))
    drdo = ["--threads", str(per_rank), *args]
    env = {"OMP_NUM_THREADS": str(per_rank)}
    if processes == 0:
        env |= {k: v for k, v in CPU_MALLOC.items() if k not in os.environ}
    if processes <= 1:
        return [sys.executable, "-m", "drdo", *drdo], env
    stage = _stage(args)
    if stage != "train":
        raise ValueError(f"stage {stage!r} runs on one process; set its resources.<rule>.gpu to 0 or 1")
    params = json.loads(args[args.index("--params") + 1]) if "--params" in args else {}
    mode = ["--use_deepspeed"] if params.get("deepspeed") else ["--multi_gpu"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", str(processes),
                "--num_machines", "1", "--main_process_port", str(free_port()),
                "--mixed_precision", "no", "--dynamo_backend", "no"]  # the trainer sets precision itself
    return [*launcher, "-m", "drdo", *drdo], env


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="drdo.launch", description=__doc__.split("\n")[0])
    ap.add_argument("--processes", type=int, default=0, help="ranks (a job's GPUs); 0 or 1: one process")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of the whole job")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the arguments of python -m drdo")
    a = ap.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    cmd, env = command(a.processes, a.threads, args)
    print("launch:", " ".join(cmd), file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, {**os.environ, **env})


if __name__ == "__main__":
    main()
