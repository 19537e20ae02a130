"""Inference throughput on one process: generation tokens/s (``drdo.generation.generate``) and
scoring tokens/s (``drdo.scoring.score``: packed, response-only LM head; reward-only without
the LM head) against the padded path it replaced (one padded row per sequence, logits at every
position). Interleaved repeats; prints one JSON line per measurement and a summary.

    PYTHONPATH=workflow python bench/inference_speed.py --model-dir DIR --data DIR/data.json

``DIR`` and ``data.json`` are what ``bench/dpo_vs_trl.py --repeats 0 --work DIR`` prepares
(a base model and encoded synthetic pairs); the prompts are decoded from the pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pandas as pd
import torch

from drdo.batching import Encoded, pad_batch
from drdo.generation import generate
from drdo.modeling import LMWithRewardHead, load_causal_lm, load_tokenizer, response_logps
from drdo.packing import PackedForward, pack


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=100, help="prompts (generation) and pairs (scoring)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model_dir)
    model = LMWithRewardHead(load_causal_lm(args.model_dir)).eval()
    pairs = json.loads(open(args.data).read())["pairs"][:args.n]
    seqs = [Encoded(p["prompt_ids"] + p[k], [0] * len(p["prompt_ids"]) + [1] * len(p[k]))
            for p in pairs for k in ("chosen_ids", "rejected_ids")]
    tokens = sum(len(s.input_ids) for s in seqs)
    prompts = pd.DataFrame({"eval_set": "bench", "prompt_id": range(len(pairs)),
                            "prompt": [tok.decode(p["prompt_ids"][1:]) for p in pairs]})
    pad = tok.pad_token_id
    cases = {
        "score_padded_logp_reward": lambda: padded_score(model, seqs, pad, args.batch, True),
        "score_packed_logp_reward": lambda: packed_score(model, seqs, pad, args.batch, True, True),
        "score_padded_logp": lambda: padded_score(model, seqs, pad, args.batch, False),
        "score_packed_logp": lambda: packed_score(model, seqs, pad, args.batch, True, False),
        "score_packed_reward_only": lambda: packed_score(model, seqs, pad, args.batch, False, True),
    }
    results = {k: [] for k in [*cases, "generate"]}
    for rep in range(args.repeats):
        for name, fn in cases.items():
            _, wall, cpu = _timed(fn)
            results[name].append((tokens / wall, tokens / cpu))
            print(json.dumps({"case": name, "repeat": rep, "tokens_per_s": tokens / wall,
                              "tokens_per_cpu_s": tokens / cpu}), flush=True)
        gen, wall, cpu = _timed(lambda: generate(model.lm, tok, prompts, [0.7], 0.8, args.max_new_tokens, 10**6,
                                                 args.batch, 0))
        n = int(gen["n_tokens"].sum() + gen["finished"].sum())  # sampled tokens, EOS included
        results["generate"].append((n / wall, n / cpu))
        print(json.dumps({"case": "generate", "repeat": rep, "new_tokens": n, "tokens_per_s": n / wall,
                          "tokens_per_cpu_s": n / cpu}), flush=True)
    summary = {k: {"tokens_per_s_median": statistics.median(x for x, _ in v),
                   "tokens_per_cpu_s_median": statistics.median(y for _, y in v)} for k, v in results.items()}
    for a, b in (("score_packed_logp_reward", "score_padded_logp_reward"), ("score_packed_logp", "score_padded_logp"),
                 ("score_packed_reward_only", "score_padded_logp_reward")):
        summary[f"{a}/{b}"] = {m: summary[a][m] / summary[b][m]
                               for m in ("tokens_per_s_median", "tokens_per_cpu_s_median")}
    print(json.dumps({"summary": summary, "threads": args.threads, "sequences": len(seqs), "tokens": tokens}))


if __name__ == "__main__":
    main()
