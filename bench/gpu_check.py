"""The GPU check: every torch stage on the device against CPU fp32, packed against padded attention
on the device's kernels, and throughput (training tokens/s with model FLOPs utilisation, generation
tokens/s against Hugging Face ``generate``). One command, about 6 minutes on one H100/H200:

    PYTHONPATH=workflow python bench/gpu_check.py --out gpu_check            # on a GPU
    PYTHONPATH=workflow python bench/gpu_check.py --device cpu --size small  # the same checks on CPU (CI)

Needs only torch, transformers, accelerate, numpy, pandas and pyarrow (no hub, no network): the
models are the embedded default's tiny Llama (tokenizer trained on a small synthetic world) and
random-weight Llamas of SmolLM2-135M's and Llama-3.2-1B's shapes. Writes ``<out>/gpu_check.json``
and ``<out>/gpu_check.md`` (one table per part) and prints the markdown.

Parts:
1. **Stages** (``stages``): SFT, DPO and DRDO training (20 optimizer steps each, 5 in the small form),
   the reference and reward tables (per-pair log-probs and rewards), generation (greedy, so the
   tokens can be compared) and scoring, each run in its own process on CPU in fp32 (the reference)
   and on the device in fp32 and in bf16 (the training precision contract: bf16 autocast over fp32
   master weights; frozen models loaded in bf16). Each row says the largest difference from CPU
   fp32 and the tolerance it is held to.
2. **Kernels** (``kernels``): per-sequence log-probs and rewards of a packed batch (shared prompts)
   against each sequence alone in a padded batch, for every attention implementation that loads
   (sdpa, eager, flex_attention, flash_attention_2/3 when installed), fp32 and bf16.
3. **Throughput** (``train``, ``generate``): DPO and DRDO training in bf16, packed rows against one
   pair per row (padded), tokens/s, model FLOPs utilisation and peak memory; generation new tokens/s
   of the workflow's loop against ``generate`` with a dynamic cache and with a static cache (which
   transformers compiles with ``torch.compile`` on a GPU), and against vLLM's engine
   (``generate.backend: vllm``) where vLLM is installed.

Model FLOPs: 6 x (non-embedding parameters) per real token, plus 6 x hidden x vocab per response
token for the LM head (the trainer applies it at response positions only); attention's own FLOPs
are left out, so MFU is a lower bound. Peak: ``--peak-tflops`` or the datasheet's dense bf16 rate for
the GPUs named in ``PEAK_TFLOPS``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense bf16
# Random-weight shapes (no hub): SmolLM2-135M and Llama-3.2-1B.
SHAPES = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, max_position_embeddings=1024),
}
# Tolerances against CPU fp32 (measured margins: docs/performance.md). fp32 on the device differs
# from the CPU by summation order only; bf16 autocast rounds every matmul input to 8 bits of mantissa.
# Losses relative to their size; log-probs per response token (a sum over 48 tokens carries 48
# roundings); rewards relative to their root mean square (the detail column also gives the error
# relative to the rewards' spread over responses, which is what DRDO distils); kernel: packed against
# padded in the same dtype, a sequence's log-prob relative to its size (at least 1), rewards absolute. bf16 keeps 8 bits of mantissa (0.4-0.8% per rounding) and every
# layer rounds again, so 5% admits rounding and still catches a wrong kernel, dtype or position
# encoding, whose errors are of the order of the values themselves.
TOL = {
    "float32": {"loss": 1e-3, "logp": 1e-4, "reward": 1e-4, "greedy_same": 0.95, "kernel": 1e-4},
    "bfloat16": {"loss": 5e-2, "logp": 0.1, "reward": 5e-2, "greedy_same": 0.5, "kernel": 5e-2},
}


def _now() -> float:
    return time.perf_counter()


# ----------------------------------------------------------------------------------------- world
def prepare(work: Path, n_pairs: int, sft_steps: int) -> None:
    """A small synthetic world, the tiny default's tokenizer and base model, and a short SFT on CPU
    (the common start of every backend's stages), with the reference table and the gold teacher."""
    import torch
    import yaml

    from drdo.base_model import tiny_llama, train_tokenizer
    from drdo.data.loaders import eval_prompts, load_comparisons, load_news, load_sft
    from drdo.gold import gold_rewards
    from drdo.synthetic import generate_world

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    syn = {**cfg["synthetic"], "n_train_posts": max(8, n_pairs // 2), "n_valid_posts": 4, "n_test_posts": 32,
           "n_news": 32, "n_sft_extra_posts": 200}
    generate_world(syn, work / "raw")
    pairs, _ = load_comparisons(work / "raw" / "comparisons.jsonl")
    pairs = pairs[pairs["split"] == "train"].head(n_pairs).reset_index(drop=True)
    sft, _ = load_sft(work / "raw" / "sft_train.jsonl")
    test, _ = load_sft(work / "raw" / "sft_test.jsonl")
    news, _ = load_news(work / "raw" / "news_test.jsonl")
    evals = eval_prompts(test, news, 32, 32, 0)
    texts = list(dict.fromkeys([*sft["prompt"], *sft["response"], *pairs["chosen"], *pairs["rejected"]]))
    tok = train_tokenizer(texts, cfg["model"]["vocab_size"])
    tiny_llama(tok, cfg["model"]["tiny"], cfg["model"]["seed"]).save_pretrained(work / "base")
    tok.save_pretrained(work / "base")
    gold = cfg["synthetic"]["gold"]
    pairs = pairs.assign(gold_chosen=gold_rewards(pairs["document"], pairs["chosen"], gold),
                         gold_rejected=gold_rewards(pairs["document"], pairs["rejected"], gold))
    pairs.to_parquet(work / "pairs.parquet")
    sft.head(256).to_parquet(work / "sft.parquet")
    evals.to_parquet(work / "eval.parquet")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    _train(work, "sft", work / "base", "float32", torch.device("cpu"), sft_steps, out=work / "sft")
    from drdo.scoring import score_pairs

    model, tok = _frozen(work / "sft", "float32", torch.device("cpu"), reward=False)
    ref = score_pairs(model, tok, pairs["prompt"].tolist(), pairs["chosen"].tolist(), pairs["rejected"].tolist(),
                      max_length=cfg["lengths"]["max_length"], batch_size=64, documents=pairs["document"].tolist())
    pairs.assign(ref_logp_chosen=ref[0]["logp"], ref_logp_rejected=ref[1]["logp"]).to_parquet(work / "pairs.parquet")


def _frozen(path, dtype: str, device, reward: bool):
    """A frozen model as the table, generation and scoring stages load it."""
    from drdo.modeling import LMWithRewardHead, for_inference, load_causal_lm, load_tokenizer

    model = (LMWithRewardHead.from_pretrained(path, new_head=True, head_seed=0, dtype=dtype) if reward
             else load_causal_lm(path, dtype, dropout=False))
    model = for_inference(model)
    assert next(model.parameters()).device.type == device.type, "the stage did not run on the device asked for"
    return model, load_tokenizer(path)


def _examples(objective, rows, tok, columns):
    from drdo.batching import encode
    from drdo.trainer import Example

    sides = ["chosen", "rejected"] if objective.paired else ["response"]
    return [Example([encode(tok, r["prompt"], r[s], 256, document=r.get("document"), max_prompt_length=200)
                     for s in sides], {c: float(r[c]) for c in columns}) for r in rows.to_dict("records")]


def _train(work: Path, name: str, init: Path, dtype: str, device, steps: int, out: Path | None = None):
    """``steps`` optimizer steps of objective ``name`` from ``init``; per-step losses."""
    import pandas as pd

    from drdo import objectives
    from drdo.modeling import LMWithRewardHead, load_causal_lm, load_tokenizer
    from drdo.trainer import TrainConfig, train

    params = {"beta": 0.1, "alpha": 0.1, "gamma": 2.0, "student_reward": "head", "logp_agg": "sum",
              "teacher": "gold"}
    objective = objectives.build(name, params)
    tok = load_tokenizer(init)
    model = (LMWithRewardHead.from_pretrained(init, new_head=True, head_seed=0, dropout=False) if objective.reward_head
             else load_causal_lm(init, dropout=not objective.paired))
    rows = pd.read_parquet(work / ("pairs.parquet" if objective.paired else "sft.parquet"))
    examples = _examples(objective, rows, tok, objective.columns)
    cfg = TrainConfig(lr=1e-3 if name == "sft" else 1e-4, batch_size=16, max_steps=steps, warmup_steps=2,
                      seed=0, dtype=dtype)
    history = train(model, examples, objective, cfg, tok.pad_token_id)
    assert next(model.parameters()).device.type == device.type, "training did not run on the device asked for"
    if out is not None:
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return [h["loss"] for h in history]


def run_stages(work: Path, backend: str, steps: int) -> dict:
    """Worker: every stage on one backend (``cpu-float32``, ``cuda-float32`` or ``cuda-bfloat16``)."""
    import pandas as pd
    import torch

    from drdo.generation import generate
    from drdo.scoring import score, score_pairs

    kind, dtype = backend.split("-")
    device = torch.device(kind)
    torch.manual_seed(0)
    out = {"backend": backend, "device_name": torch.cuda.get_device_name() if kind == "cuda" else platform.processor()}
    for name, init in (("sft", work / "base"), ("dpo", work / "sft"), ("drdo", work / "sft")):
        t = _now()
        out[f"train_{name}"] = _train(work, name, init, dtype, device, steps)
        out[f"train_{name}_s"] = _now() - t
    pairs = pd.read_parquet(work / "pairs.parquet")
    args = (pairs["prompt"].tolist(), pairs["chosen"].tolist(), pairs["rejected"].tolist())
    kw = {"max_length": 256, "batch_size": 64, "documents": pairs["document"].tolist(), "max_prompt_length": 200}
    model, tok = _frozen(work / "sft", dtype, device, reward=False)
    ref = score_pairs(model, tok, *args, **kw)
    out["table_logp"] = np.concatenate([ref[0]["logp"] / ref[0]["ntok"], ref[1]["logp"] / ref[1]["ntok"]]).tolist()
    evals = pd.read_parquet(work / "eval.parquet")
    gen = generate(model, tok, evals, [1.0], top_p=1e-6, max_new_tokens=48, max_prompt_length=200,
                   batch_size=64, seed=0)  # top-p ~0: the most likely token, comparable across devices
    out["greedy"] = gen["response"].tolist()
    del model
    rm, tok = _frozen(work / "sft", dtype, device, reward=True)
    rew = score_pairs(rm, tok, *args, **kw, logps=False)
    out["table_reward"] = np.concatenate([rew[0]["reward"], rew[1]["reward"]]).tolist()
    reference = json.loads((work / "cpu-float32.json").read_text())["greedy"] if kind != "cpu" else out["greedy"]
    merged = evals.assign(response=reference)  # everyone scores the CPU's generations
    scored = score(rm, tok, merged["prompt"].tolist(), merged["response"].tolist(), 256, 64,
                   max_prompt_length=200, documents=merged["document"].tolist(), logps=True)
    out["score_reward"], out["score_logp"] = scored["reward"].tolist(), (scored["logp"] / scored["ntok"]).tolist()
    return out


def compare_stages(results: dict[str, dict]) -> list[dict]:
    """Rows of (stage, backend, largest difference from CPU fp32, tolerance, pass)."""
    base = results["cpu-float32"]
    rows = []
    for backend, r in results.items():
        if backend == "cpu-float32":
            continue
        tol = TOL[backend.split("-")[1]]
        steps = len(base["train_sft"])
        for key, what, kind in (("train_sft", f"SFT training loss, {steps} steps", "loss"),
                                ("train_dpo", f"DPO training loss, {steps} steps", "loss"),
                                ("train_drdo", f"DRDO training loss, {steps} steps", "loss"),
                                ("table_logp", "reference table log-probs, per token", "logp"),
                                ("table_reward", "reward table rewards, relative to their RMS", "reward"),
                                ("score_reward", "scoring: rewards of generations, relative to their RMS", "reward"),
                                ("score_logp", "scoring: log-probs of generations, per token", "logp")):
            a, b = np.asarray(r[key], dtype=float), np.asarray(base[key], dtype=float)
            rms = max(float(np.sqrt(np.nanmean(b ** 2))), 1e-12)
            scale = {"loss": np.maximum(1.0, np.abs(b)), "logp": 1.0, "reward": rms}[kind]
            diff = np.abs(a - b) / scale
            worst = float(np.nanmax(diff)) if diff.size else float("nan")
            finite = bool(np.isfinite(a).all())
            detail = (f"{float(np.nanmax(np.abs(a - b))) / max(float(np.nanstd(b)), 1e-12):.3g} of their spread"
                      if kind == "reward" else None)
            rows.append({"part": "stages", "check": what, "backend": backend, "value": worst, "detail": detail,
                         "tolerance": tol[kind], "pass": finite and worst <= tol[kind]})
        same = float(np.mean([x == y for x, y in zip(r["greedy"], base["greedy"])]))
        rows.append({"part": "stages", "check": "generation: greedy responses equal to CPU's (share)",
                     "backend": backend, "value": same, "tolerance": tol["greedy_same"],
                     "pass": same >= tol["greedy_same"]})
    return rows


# --------------------------------------------------------------------------------------- kernels
def check_kernels(work: Path, device_name: str) -> list[dict]:
    """Packed (shared prompts) against padded, per attention implementation and dtype."""
    import pandas as pd
    import torch

    from drdo.batching import encode, pad_batch
    from drdo.modeling import LMWithRewardHead, load_tokenizer, response_logps
    from drdo.packing import PackedForward, pack, shares_prefixes

    device = torch.device(device_name)
    tok = load_tokenizer(work / "sft")
    pairs = pd.read_parquet(work / "pairs.parquet").head(16)
    groups = [[encode(tok, r["prompt"], r[s], 256, document=r["document"], max_prompt_length=200)
               for s in ("chosen", "rejected")] for r in pairs.to_dict("records")]
    flat = [s for g in groups for s in g]
    impls = ["sdpa", "eager", "flex_attention"]
    for flash in ("flash_attention_2", "flash_attention_3"):
        try:
            __import__({"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}[flash])
            impls.append(flash)
        except ImportError:
            pass
    rows = []
    for impl in impls:
        for dtype in ("float32", "bfloat16"):
            try:
                model = LMWithRewardHead.from_pretrained(work / "sft", new_head=True, head_seed=0)
                model.lm.set_attn_implementation(impl)
                model = model.to(device).eval()
                with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=dtype == "bfloat16"):
                    packed = pack(groups, tok.pad_token_id, share_prefix=shares_prefixes(model)).to(device)
                    logp, reward = PackedForward(model)(packed, logps=True, rewards=True)
                    b = {k: v.to(device) for k, v in pad_batch(flat, tok.pad_token_id).items()}
                    logits, ref_reward = model(b["input_ids"], b["attention_mask"])
                    ref_logp, _ = response_logps(logits, b["input_ids"], b["loss_mask"])
                diff = (logp.float() - ref_logp.float()).abs()
                d_logp = float(diff.max())
                # a sequence's log-prob sums its response tokens': fp32 rounding grows with its size
                d_rel = float((diff / ref_logp.float().abs().clamp(min=1)).max())
                d_rew = float((reward.float() - ref_reward.float()).abs().max())
                tol = TOL[dtype]
                rows.append({"part": "kernels", "check": f"packed vs padded, {impl}", "backend": f"{device.type}-{dtype}",
                             "value": max(d_rel, d_rew),
                             "detail": f"log-prob {d_logp:.2e} ({d_rel:.1e} of its size), reward {d_rew:.2e}",
                             "tolerance": tol["kernel"], "pass": max(d_rel, d_rew) <= tol["kernel"]})
            except Exception as e:  # noqa: BLE001 - a kernel that does not load is reported, not fatal
                rows.append({"part": "kernels", "check": f"packed vs padded, {impl}", "backend": f"{device.type}-{dtype}",
                             "value": None, "detail": f"{type(e).__name__}: {str(e)[:160]}", "tolerance": None,
                             "pass": False})
    return rows


# ------------------------------------------------------------------------------------ throughput
def _random_llama(shape: str, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], tie_word_embeddings=True, attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.config.use_cache = False
    return model


def _model_flops_per_token(model) -> tuple[float, float]:
    """(FLOPs per real token through the decoder, extra FLOPs per response token for the LM head),
    forward + backward (6 per parameter per token)."""
    emb = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight
    decoder = sum(p.numel() for p in model.parameters()) - emb - (0 if head is model.get_input_embeddings().weight
                                                                   else head.numel())
    return 6.0 * decoder, 6.0 * head.numel()


def _pairs(n: int, prompt_len: int, response_len: int, vocab: int, seed: int):
    import torch

    from drdo.batching import Encoded
    from drdo.trainer import Example

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=g).tolist()
        seqs = [Encoded(prompt + torch.randint(3, vocab, (response_len,), generator=g).tolist(),
                        [0] * prompt_len + [1] * response_len) for _ in range(2)]
        out.append(Example(seqs, {"ref_logp_chosen": -50.0, "ref_logp_rejected": -55.0,
                                  "oracle_chosen": 1.0, "oracle_rejected": 0.0}))
    return out


def bench_train(shape: str, method: str, packed: bool, a) -> dict:
    import torch

    from drdo import objectives
    from drdo.modeling import LMWithRewardHead
    from drdo.trainer import TrainConfig, train

    device = torch.device(a.device)
    model = _random_llama(shape, device)
    per_token, per_response_token = _model_flops_per_token(model)
    objective = objectives.build(method, {"beta": 0.1, "alpha": 0.1, "gamma": 2.0, "student_reward": "head",
                                          "logp_agg": "sum", "teacher": "oracle"})
    if objective.reward_head:
        model = LMWithRewardHead(model).to(device)
    examples = _pairs(a.batch * (a.steps + 1), a.prompt_len, a.response_len, SHAPES[shape]["vocab_size"], 0)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    # packed: rows of up to 8 pairs; padded: one pair per row (each row padded to the longest pair)
    cfg = dict(lr=1e-6, batch_size=a.batch, seed=0, dtype=dtype, pack_tokens=8 * (a.prompt_len + 2 * a.response_len)
               if packed else 1)
    train(model, examples[:a.batch], objective, TrainConfig(**cfg, max_steps=1), pad_id=0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = _now()
    train(model, examples[a.batch:], objective, TrainConfig(**cfg, max_steps=a.steps), pad_id=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = _now() - t
    pairs = a.steps * a.batch
    real_tokens = pairs * (a.prompt_len + 2 * a.response_len)  # a pair's prompt is computed once
    seq_tokens = pairs * 2 * (a.prompt_len + a.response_len)  # what a trainer without shared prompts reads
    flops = real_tokens * per_token + pairs * 2 * a.response_len * per_response_token
    peak = a.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in _device_name(device)), None)
    mem = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss()) / 2**30
    return {"part": "train", "model": shape, "method": method, "layout": "packed" if packed else "one pair per row",
            "dtype": dtype, "pairs_per_step": a.batch, "prompt_len": a.prompt_len, "response_len": a.response_len,
            "steps": a.steps, "seconds": round(seconds, 3), "seq_tokens_per_s": round(seq_tokens / seconds, 1),
            "model_tflops_per_s": round(flops / seconds / 1e12, 2),
            "mfu": round(flops / seconds / (peak * 1e12), 4) if peak else None, "peak_mem_gib": round(mem, 2)}


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def bench_generate(shape: str, backend: str, rows: int, a) -> dict:
    """New tokens/s of ``rows`` sequences (prompts x temperatures), ``a.new_tokens`` each, EOS never
    sampled (the vocabulary's last id is masked as EOS nowhere), so every backend decodes the same count."""
    import torch

    from drdo.generation import sample_batch

    device = torch.device(a.device)
    model = _random_llama(shape, device).to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    model.config.use_cache = True
    model.generation_config.eos_token_id = None  # every row decodes new_tokens tokens
    temps = [0.2, 0.5, 0.7, 0.9]
    n_prompts = max(1, rows // len(temps))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, SHAPES[shape]["vocab_size"], (a.prompt_len,), generator=g).tolist()
               for _ in range(n_prompts)]
    never = -1  # no token id is -1: rows never finish early

    def ours():
        gen = torch.Generator(device=device).manual_seed(0)
        return sample_batch(model, prompts, temps, 0.8, a.new_tokens, 0, never, gen)

    def hf(static: bool):
        ids = torch.tensor(prompts, device=device).repeat_interleave(len(temps), 0)
        kw = dict(do_sample=True, top_p=0.8, top_k=0, temperature=0.7, max_new_tokens=a.new_tokens, pad_token_id=0)
        if static:
            kw["cache_implementation"] = "static"
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)

    # hf-static: transformers compiles the static-cache forward itself on a GPU (its own compile
    # settings). Wrapping model.forward in torch.compile(mode="reduce-overhead") by hand instead failed
    # on an H200 (transformers 5.17): the CUDA graphs overwrote the static cache's tensors.
    def vllm(engine=[]):  # noqa: B006 - the engine, started (and timed) by the warm-up call
        from drdo import generation_vllm

        if not engine:
            folder = tempfile.mkdtemp(prefix="gpu_check.vllm.")
            model.save_pretrained(folder)  # no tokenizer: prompts and responses stay token ids
            engine.append(generation_vllm.engine(folder, str(model.dtype).removeprefix("torch."),
                                                 a.prompt_len + a.new_tokens, len(prompts) * len(temps), 0,
                                                 torch.get_num_threads(), {"gpu_memory_utilization": 0.8},
                                                 skip_tokenizer_init=True))
        assert engine[0].reset_prefix_cache()  # the timed call computes its prompts, as a job does
        return generation_vllm.sample(engine[0], prompts, temps, 0.8, a.new_tokens, [], 0)

    run = {"loop": ours, "hf-dynamic": lambda: hf(False), "hf-static": lambda: hf(True), "vllm": vllm}[backend]
    t = _now()
    with torch.no_grad():
        run()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    warm = _now() - t
    t = _now()
    with torch.no_grad():
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = _now() - t
    new = n_prompts * len(temps) * a.new_tokens
    return {"part": "generate", "model": shape, "backend": backend, "rows": n_prompts * len(temps),
            "prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "warmup_s": round(warm, 2),
            "seconds": round(seconds, 3), "new_tokens_per_s": round(new / seconds, 1),
            "peak_mem_gib": None if backend == "vllm" else  # vLLM's engine runs in a process of its own
            round((torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss()) / 2**30, 2)}


# ---------------------------------------------------------------------------------------- report
def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"GPU check on {env['device_name']} ({env['date']}; torch {env['torch']}, transformers "
             f"{env['transformers']}): {result['passed']} of {result['checked']} correctness checks pass.", ""]

    def table(header: str, align: str, cells: list[str]) -> None:
        if cells:
            lines.extend([header, align, *cells, ""])

    def number(value, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    def percent(value) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    rows = result["rows"]
    table("| part | check | backend | largest difference | tolerance | pass |", "|---|---|---|---:|---:|---|",
          [f"| {r['part']} | {r['check']}{f' ({d})' if (d := r.get('detail')) else ''} | {r['backend']} | "
           f"{number(r['value'], '.3g')} | {number(r['tolerance'], 'g')} | {'yes' if r['pass'] else '**no**'} |"
           for r in rows if r["part"] in ("stages", "kernels")])
    table("| model | method | layout | dtype | seq tokens/s | model TFLOP/s | MFU | peak GiB |",
          "|---|---|---|---|---:|---:|---:|---:|",
          [f"| {r['model']} | {r['method']} | {r['layout']} | {r['dtype']} | {r['seq_tokens_per_s']:,.0f} | "
           f"{r['model_tflops_per_s']:.1f} | {percent(r['mfu'])} | "
           f"{r['peak_mem_gib']} |" for r in rows if r["part"] == "train"])
    table("| model | generation | rows | prompt + new tokens | new tokens/s | warm-up s | peak GiB |",
          "|---|---|---:|---|---:|---:|---:|",
          [f"| {r['model']} | {r['backend']} | {r['rows']} | {r['prompt_len']} + {r['new_tokens']} | "
           f"{r['new_tokens_per_s']:,.0f} | {r['warmup_s']} | {'-' if r['peak_mem_gib'] is None else r['peak_mem_gib']} |"
           for r in rows if r["part"] == "generate"])
    for s in result["skipped"]:
        lines.append(f"- skipped: {s}")
    return "\n".join(lines) + "\n"


def _worker(args: list[str], env: dict | None = None) -> None:
    proc = subprocess.run([sys.executable, __file__, *args], env={**os.environ, **(env or {})}, text=True,
                          capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=["full", "small"], default="full",
                    help="small: tiny models and few steps (the CPU form CI runs)")
    ap.add_argument("--parts", default="stages,kernels,train,generate")
    ap.add_argument("--out", default="gpu_check")
    ap.add_argument("--time-budget", type=float, default=480.0, help="seconds; later throughput runs are skipped")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    small = a.size == "small"
    if a.worker == "prepare":
        prepare(Path(a.work), 32 if small else 64, 20 if small else 60)
        return 0
    if a.worker:
        out = run_stages(Path(a.work), a.worker, 5 if small else 20)
        (Path(a.work) / f"{a.worker}.json").write_text(json.dumps(out))
        return 0

    start = _now()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    parts = a.parts.split(",")
    device = torch.device(a.device)

    def report() -> dict:
        """Written after every part, so a run cut short keeps what it measured."""
        checks = [r for r in rows if r["part"] in ("stages", "kernels")]
        result = {"environment": {"device_name": _device_name(device), "date": time.strftime("%Y-%m-%d"),
                                  "torch": torch.__version__, "transformers": transformers.__version__,
                                  "python": platform.python_version(), "host_cpu": platform.processor()},
                  "args": vars(a), "rows": rows, "skipped": skipped, "checked": len(checks),
                  "passed": sum(r["pass"] for r in checks), "seconds": round(_now() - start, 1)}
        (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=1))
        (out_dir / "gpu_check.md").write_text(markdown(result))
        return result

    def guarded(name: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken part must not cost the others' measurements
            skipped.append(f"{name}: {type(e).__name__}: {str(e)[-600:]}")
            print(f"{name} failed: {e}", file=sys.stderr, flush=True)
        report()

    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        work = Path(tmp)
        if "stages" in parts or "kernels" in parts:
            guarded("prepare", lambda: _worker(["--worker", "prepare", "--work", str(work), "--size", a.size],
                                               {"CUDA_VISIBLE_DEVICES": ""}))

        def stages():
            backends = ["cpu-float32", f"{a.device}-float32", f"{a.device}-bfloat16"]
            if a.device == "cpu":
                backends = ["cpu-float32", "cpu-bfloat16"]  # the CPU form: bf16 autocast on the CPU
            results = {}
            for b in backends:
                _worker(["--worker", b, "--work", str(work), "--size", a.size],
                        {"CUDA_VISIBLE_DEVICES": ""} if b.startswith("cpu") else {})
                results[b] = json.loads((work / f"{b}.json").read_text())
            rows.extend(compare_stages(results))

        if "stages" in parts:
            guarded("stages", stages)
        if "kernels" in parts:
            guarded("kernels", lambda: rows.extend(check_kernels(work, a.device)))
    shapes = ["tiny"] if small else ["135m", "1b"]
    ta = argparse.Namespace(device=a.device, batch=4 if small else 16, steps=2 if small else 6,
                            prompt_len=24 if small else 384, response_len=8 if small else 128,
                            peak_tflops=a.peak_tflops)
    ga = argparse.Namespace(device=a.device, prompt_len=24 if small else 384, new_tokens=8 if small else 128)
    plan = []
    if "train" in parts:
        plan += [("train", shape, method, packed) for shape in shapes for method in ("dpo", "drdo")
                 for packed in (True, False)]
    if "generate" in parts:
        plan += [("generate", shape, backend, n) for shape in shapes for n in ([8] if small else [64, 256])
                 for backend in ("loop", "hf-dynamic")]
        # compiling costs a minute or more: last, so the budget guard can drop it
        plan += [("generate", shape, "hf-static", n) for shape in shapes[:1] for n in ([8] if small else [64, 256])]
        # the generate.backend: vllm engine, on a GPU only (bench/inference_speed.py measures it on a
        # CPU; vLLM's CPU attention takes no head size under 32, which the small shape has)
        if a.device == "cuda" and importlib.util.find_spec("vllm"):
            plan += [("generate", shape, "vllm", n) for shape in shapes for n in (64, 256)]
        elif a.device == "cuda":
            skipped.append("generate vllm: vLLM is not installed")
    for kind, shape, what, arg in plan:
        name = f"{kind} {shape} {what} {arg}"
        if _now() - start > a.time_budget:
            skipped.append(f"{name}: over the time budget")
            continue

        def one(kind=kind, shape=shape, what=what, arg=arg):
            rows.append(bench_train(shape, what, arg, ta) if kind == "train" else bench_generate(shape, what, arg, ga))
            print(json.dumps(rows[-1]), flush=True)

        guarded(name, one)
        if a.device == "cuda":
            torch.cuda.empty_cache()
    result = report()
    print(markdown(result))
    return 0 if result["passed"] == result["checked"] else 1


if __name__ == "__main__":
    sys.exit(main())
