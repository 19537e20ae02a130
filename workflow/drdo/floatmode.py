"""The CPU floating-point mode of a job's process: subnormal floats flushed to zero.

An x86 CPU takes a slow microcode path for every operation on a subnormal float (below 1.2e-38
in float32), tens of times slower per element. DRDO's focal term gives a pair whose chosen
response already wins by a wide margin a log-prob gradient of 1e-34 to 1e-45; the LM head and
each layer's backward multiply it into whole tensors of subnormals. On the tiny default (1
thread) a step with one or two such pairs took 1.6x a DPO step, all of it in matrix products and
products of the backward. Flushed to zero, the same runs gave bit-identical losses and weights
(a subnormal added to any gradient sum above ~1e-31 rounds away). GPUs handle subnormals at full
speed, so this is a CPU matter only.

The mode (MXCSR's flush-to-zero and denormals-are-zero bits) belongs to each thread, and torch's
intra-op threads copy it from the thread that starts them: set it before the process's first
parallel operation and every thread has it; set later, it reaches the calling thread only.
"""

from __future__ import annotations


def flush_subnormals() -> bool:
    """Flush subnormal floats to zero in this thread and the intra-op threads started after it;
    False where the CPU has no such mode (then nothing changes)."""
    import torch

    return torch.set_flush_denormal(True)
