"""Training throughput of the project's trainer on one device: a DPO align job of a ~0.5B
Llama-architecture model (Qwen2.5-0.5B's shapes, random weights: no hub is needed), a few
steps in bf16, with and without gradient checkpointing. Prints one JSON line per setting:
tokens/s, peak memory and MFU (model FLOPs utilisation, 6 * params * tokens/s over the
device's dense bf16 peak).

    PYTHONPATH=workflow python bench/align_throughput.py                        # on a GPU
    PYTHONPATH=workflow python bench/align_throughput.py --device cpu --size tiny  # anywhere (tested)

On a lent GPU machine (its image has torch; carry transformers/accelerate wheels if it lacks
them) this finishes in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from drdo import objectives
from drdo.batching import Encoded
from drdo.trainer import Example, TrainConfig, train

SIZES = {  # Qwen2.5-0.5B's shapes; tiny for CPU checks
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, max_position_embeddings=1024),
}
PEAK_FLOPS = {"cuda": 989e12}  # dense bf16, H100/H200 SXM datasheet; other GPUs: pass --peak-tflops


def pairs(n: int, prompt_len: int, response_len: int, vocab: int, seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=g).tolist()
        seqs = [Encoded(prompt + torch.randint(3, vocab, (response_len,), generator=g).tolist(),
                        [0] * prompt_len + [1] * response_len) for _ in range(2)]
        out.append(Example(seqs, {"ref_logp_chosen": -50.0, "ref_logp_rejected": -55.0}))
    return out


def run(args, checkpointing: bool) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SIZES[args.size], tie_word_embeddings=True)).to(device)
    model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())
    examples = pairs(args.batch * (args.steps + 1), args.prompt_len, args.response_len, model.config.vocab_size)
    objective = objectives.build("dpo", {"beta": 0.1})
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    cfg = dict(lr=1e-6, batch_size=args.batch, seed=0, dtype=dtype, gradient_checkpointing=checkpointing)
    train(model, examples[:args.batch], objective, TrainConfig(**cfg, max_steps=1), pad_id=0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train(model, examples[args.batch:], objective, TrainConfig(**cfg, max_steps=args.steps), pad_id=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch * 2 * (args.prompt_len + args.response_len)
    tps = tokens / seconds
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    flops = (args.peak_tflops * 1e12) if args.peak_tflops else PEAK_FLOPS.get(device.type)
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "size": args.size,
            "params_m": round(n_params / 1e6, 1), "dtype": dtype, "gradient_checkpointing": checkpointing,
            "batch_pairs": args.batch, "seq_len": args.prompt_len + args.response_len, "steps": args.steps,
            "seconds": round(seconds, 2), "tokens_per_s": round(tps, 1),
            "peak_mem_gib": round(peak, 2), "peak_is": "cuda allocated" if device.type == "cuda" else "process RSS",
            "mfu": round(6 * n_params * tps / flops, 4) if flops else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--prompt-len", type=int, default=384)
    ap.add_argument("--response-len", type=int, default=128)
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args()
    for checkpointing in (False, True):
        print(json.dumps(run(args, checkpointing)), flush=True)


if __name__ == "__main__":
    main()
