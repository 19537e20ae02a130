"""Sampling responses with vLLM (``generate.backend: vllm``, the ``vllm`` extra): the same
prompts, temperatures, top-p, end tokens and generations table as ``drdo.generation``, drawn by
vLLM's engine, which pages its key/value cache, batches requests as they finish and arrive, and
computes each full cache block of a prompt once for all its temperature rows (prefix caching).

What changes: the draws. vLLM samples with its own kernels and one generator per row, seeded from
``generate.seed``, the prompt's position and the temperature's, so a row does not depend on the
batch it ran in, yet no response equals the workflow loop's, whose rows share one generator.
Both sample softmax(logits / T) restricted to the nucleus of mass top-p; their win-rates agree in
distribution, not row by row.
"""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pandas as pd

from .generation import as_generations, end_tokens, prompt_tokens, response_row

log = logging.getLogger("drdo.generate")


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def row_seed(seed: int, prompt: int, temperature: int) -> int:
    """The seed of one row's generator: a hash of the three, so neighbouring rows draw
    unrelated streams."""
    return int(np.random.SeedSequence([seed, prompt, temperature]).generate_state(1)[0])


def engine_kwargs(policy: str, dtype: str, max_model_len: int, rows: int, seed: int, options: dict) -> dict:
    """vLLM's ``LLM`` arguments for one policy: ``options`` is ``generate.vllm``."""
    kv = options.get("kv_cache_gb")
    return {"model": policy, "tokenizer": policy, "dtype": dtype, "seed": seed, "max_model_len": max_model_len,
            "max_num_seqs": rows, "enable_prefix_caching": True, "enforce_eager": options.get("enforce_eager", False),
            "gpu_memory_utilization": options.get("gpu_memory_utilization", 0.9),
            **({"kv_cache_memory_bytes": int(kv * 2**30)} if kv else {})}


def engine(policy: str, dtype: str, max_model_len: int, rows: int, seed: int, threads: int, options: dict,
           **extra):
    """A vLLM engine on ``policy`` (its processes stop with ``shutdown``); ``extra``: more ``LLM``
    arguments."""
    # On the CPU, vLLM pins its OpenMP threads to every core of a NUMA node unless told otherwise:
    # keep a job to the threads it was given, beside other jobs (a user's own setting wins).
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    from vllm import LLM
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # A prompt split over steps (chunked prefill) has the token drawn at its first chunk thrown
        # away, and vLLM rewinds that row's generator, which torch's CPU generator cannot do: the
        # engine dies (vLLM 0.32). Whole prompts only, then (each step still takes as many as fit).
        extra = {"enable_chunked_prefill": False, **extra}
    return LLM(**engine_kwargs(policy, dtype, max_model_len, rows, seed, options), **extra)


def shutdown(llm) -> None:
    """Stop the engine's processes, which python -m drdo's quick exit (no interpreter teardown, no
    atexit) would otherwise leave running."""
    llm.llm_engine.engine_core.shutdown()


def sample(llm, encoded: list[list[int]], temperatures: list[float], top_p: float, max_new_tokens: int,
           ends: list[int], seed: int) -> list[tuple[int, float, list[int]]]:
    """(prompt index, temperature, response tokens up to and with its end token) for every prompt
    at every temperature, each row drawn with its own seed (``row_seed``)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    keys = [(i, j) for i in range(len(encoded)) for j in range(len(temperatures))]
    requests = [TokensPrompt(prompt_token_ids=list(encoded[i])) for i, _ in keys]
    params = [SamplingParams(temperature=temperatures[j], top_p=top_p, max_tokens=max_new_tokens, stop_token_ids=ends,
                             seed=row_seed(seed, i, j), detokenize=False) for i, j in keys]
    out = []
    for (i, j), result in zip(keys, llm.generate(requests, params, use_tqdm=False)):
        done = result.outputs[0]
        seq = list(done.token_ids)
        if (done.finish_reason == "stop") != (bool(seq) and seq[-1] in ends):
            raise RuntimeError(f"vLLM ended prompt {i} at temperature {temperatures[j]} with finish_reason "
                               f"{done.finish_reason!r} and last token {seq[-1:]}: not one of the end tokens {ends}")
        out.append((i, temperatures[j], seq))
    return out


def generate(policy: str, tokenizer, prompts: pd.DataFrame, temperatures: list[float], top_p: float,
             max_new_tokens: int, max_prompt_length: int, batch_size: int, seed: int, chat: bool = False,
             dtype: str = "float32", threads: int = 1, options: dict | None = None) -> pd.DataFrame:
    """One sampled response per (prompt, temperature), as ``drdo.generation.generate`` returns them;
    ``batch_size``: the rows vLLM decodes together at most (``max_num_seqs``)."""
    from transformers import GenerationConfig

    encoded = prompt_tokens(tokenizer, prompts, max_prompt_length, chat)
    try:
        generation_config = GenerationConfig.from_pretrained(policy)
    except OSError:  # a model saved without one: the tokenizer's EOS alone
        generation_config = None
    ends = end_tokens(generation_config, tokenizer)
    # SIGTERM (a kill, SLURM's timeout or preemption) ends the job through the finally below, so the
    # engine's processes stop with it; a SIGKILL leaves them to the job's cgroup or process group
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    llm = None
    try:
        llm = engine(policy, dtype, max_prompt_length + max_new_tokens, batch_size, seed, threads, options or {})
        drawn = sample(llm, encoded, temperatures, top_p, max_new_tokens, ends, seed)
    finally:
        if llm is not None:
            shutdown(llm)
        signal.signal(signal.SIGTERM, previous)
    log.info("vLLM sampled %d rows (%d prompts x %d temperatures)", len(drawn), len(encoded), len(temperatures))
    return as_generations(prompts, [response_row(tokenizer, seq, ends, i, t) for i, t, seq in drawn])
