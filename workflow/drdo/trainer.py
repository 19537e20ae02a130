"""One training loop for every objective (SFT, Oracle, ensemble RMs, DPO, e-DPO, DRDO), on
one CPU, one GPU or N processes (DDP or DeepSpeed ZeRO-2) through ``accelerate``.

AdamW (no decay on biases and norms), linear warm-up then cosine decay, gradient
accumulation, gradient clipping, a seed. Each micro-batch is packed without padding, a pair's
prompt computed once and log-probs taken at response positions only (``packing.py``). The
sample order is a pure function of (seed, step) and each global batch is cut into equal
per-rank shards, so N processes with micro-batch b/N, or A accumulated micro-batches, reproduce
one process with the whole batch (up to rounding): SFT's token mean is over the step's tokens and
e-DPO's min over members over the step's member means (``_step_batches``). A job killed midway
resumes from its last saved state (``accelerate``'s
``save_state``: weights, optimizer, scheduler and every RNG, CUDA included) and finishes
exactly as an uninterrupted one would.

Precision contract (``train.dtype`` bfloat16 or float16; float32 is plain fp32 throughout),
the same on every backend:

* Weights load in fp32 (``cmd_train``): the fp32 parameters are the master weights, exactly the
  checkpoint's values, and AdamW keeps its states in fp32. Buffers keep what ``from_pretrained``
  gives them (the rotary frequencies stay fp32).
* Forward and backward run under ``torch.autocast(dtype)``: linear layers and matmuls in bf16;
  what autocast keeps in fp32, the norms (they upcast) and the log-softmax of the log-probs
  (``packing.target_logps`` upcasts) in fp32. Gradients land in the fp32 parameters' ``.grad``:
  accumulated over micro-batches and reduced over ranks in fp32.
* One process: accelerate's native AMP wraps the forward in autocast; nothing else changes.
* DDP: the same autocast on each rank; DDP all-reduces the fp32 gradients.
* DeepSpeed ZeRO-2: not DeepSpeed's ``bf16`` mode (which casts the module's parameters to bf16
  in ``deepspeed.initialize``, so the masters start from bf16-rounded weights, the forward is
  pure bf16, and gradients are accumulated and reduce-scattered in bf16), but its
  ``torch_autocast`` mode: the module stays fp32, DeepSpeed enters autocast around the forward,
  and no parameter gets a bf16 communication dtype (``lower_precision_safe_modules: []``);
  ``communication_data_type`` and ``grad_accum_dtype`` are fp32. The trainer sets these keys
  (:func:`deepspeed_config`); a DeepSpeed config file that sets them is refused.
* Evaluation (``evaluate``, rank 0's validation pass) runs under the same autocast.
* The checkpoint is saved in ``train.save_dtype`` (parameters cast on rank 0 after evaluation;
  the manifest records it): float32 keeps the master weights exactly, bfloat16 halves the size
  and is what frozen bf16 stages compute with anyway (they round fp32 weights to bf16 on load).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DeepSpeedPlugin
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs
from transformers import get_cosine_schedule_with_warmup

from .batching import Encoded
from .io import config_hash
from .lean_layers import lean_training
from .objectives import WHOLE_BATCH, Objective
from .packing import Packed, PackedForward, as_packed_forward, pack, shares_prefixes
from .progress import Progress

log = logging.getLogger("drdo.train")
RESUME_META = "drdo_resume.json"
MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}  # train.dtype -> accelerate


@dataclass
class Example:
    seqs: list[Encoded]  # [chosen, rejected] for pairs, [sequence] otherwise
    values: dict[str, float] = field(default_factory=dict)  # precomputed table columns


@dataclass
class TrainConfig:
    lr: float
    batch_size: int  # global: pairs (or sequences) per micro-step over all ranks together
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 0  # resume-state interval in optimizer steps; 0 = never
    dtype: str = "float32"  # compute dtype; master weights and optimizer states stay fp32
    save_dtype: str = "float32"  # dtype of the saved checkpoint's parameters
    gradient_checkpointing: bool = False
    pack_tokens: int = 0  # row budget of a packed micro-batch in tokens; 0: packing.AUTO_ROW_CAP rule
    deepspeed: str | dict | None = None  # DeepSpeed config (JSON path or its content); None = DDP
    max_nonfinite_steps: int = 0  # optimizer steps with a non-finite loss or gradient skipped, at most

    @classmethod
    def from_params(cls, p: dict) -> "TrainConfig":
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})

    def total_steps(self, n_examples: int) -> int:
        if self.max_steps:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n_examples / (self.batch_size * self.grad_accum)))


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The process's Accelerator: single process, DDP or DeepSpeed, as launched (``drdo.launch``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by the launcher
    # without CUDA, N ranks talk over gloo (accelerate would otherwise assume a single process)
    handlers = [InitProcessGroupKwargs(backend="gloo")] if world > 1 and not torch.cuda.is_available() else []
    plugin = None
    if cfg.deepspeed and world > 1:  # ZeRO shards over ranks: nothing to gain on one process
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(cfg, world))
    if world == 1:  # a process may train several models (tests, notebooks): accelerate's state is global
        AcceleratorState._reset_state()
    # under DeepSpeed, its config alone sets precision (accelerate would switch on DeepSpeed's bf16 mode)
    return Accelerator(mixed_precision=MIXED_PRECISION[cfg.dtype] if plugin is None else "no",
                       gradient_accumulation_steps=cfg.grad_accum, deepspeed_plugin=plugin,
                       kwargs_handlers=handlers, cpu=not torch.cuda.is_available() and plugin is None,
                       # we shard each global batch ourselves: step the LR schedule once per optimizer step
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


DEEPSPEED_PRECISION_KEYS = ("bf16", "fp16", "torch_autocast", "communication_data_type", "data_types")


def deepspeed_config(cfg: TrainConfig, world: int) -> dict:
    """The DeepSpeed config of a run: ``train.deepspeed`` plus the batch and precision keys the
    trainer owns (the precision contract in the module docstring)."""
    ds = dict(cfg.deepspeed) if isinstance(cfg.deepspeed, dict) else json.loads(Path(cfg.deepspeed).read_text())
    if owned := [k for k in DEEPSPEED_PRECISION_KEYS if k in ds]:
        raise ValueError(f"config key train.deepspeed: the DeepSpeed config sets {owned}; the trainer sets them "
                         "from train.dtype (the precision contract in drdo.trainer): remove them")
    mixed = cfg.dtype != "float32"
    # the batch values accelerate would otherwise infer from a DataLoader, which we do not use
    ds.update(train_micro_batch_size_per_gpu=_micro_batch(cfg.batch_size, world),
              gradient_accumulation_steps=cfg.grad_accum, train_batch_size=cfg.batch_size * cfg.grad_accum,
              gradient_clipping=cfg.max_grad_norm, bf16={"enabled": False}, fp16={"enabled": False},
              torch_autocast={"enabled": mixed, "dtype": cfg.dtype, "lower_precision_safe_modules": []},
              communication_data_type="fp32", data_types={"grad_accum_dtype": "fp32"})
    return ds


def autocast(dtype: str, device: torch.device):
    """The compute autocast of ``train.dtype``, as training uses it; float32: no context at all."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))


def _micro_batch(batch_size: int, world: int) -> int:
    if batch_size % world:
        raise ValueError(f"config key train.batch_size ({batch_size}) must be divisible by the number "
                         f"of processes ({world}: the job's resources.gpu)")
    return batch_size // world


def collate(examples: list[Example], pad_id: int, paired: bool, budget: int = 0, share_prefix: bool = True) -> dict:
    """Pack a batch without padding (``packing.pack``); a pair's prompt is computed once.

    Sequence 2i is example i's chosen response and 2i+1 its rejected one (i for unpaired)."""
    groups = [e.seqs[:2] if paired else e.seqs[:1] for e in examples]
    names = examples[0].values.keys()
    return {"packed": pack(groups, pad_id, budget, share_prefix),
            # float32 unless a float64 run (bench/dpo_vs_trl.py --dtype float64) sets the default dtype
            "values": {k: torch.tensor([e.values[k] for e in examples], dtype=torch.get_default_dtype()) for k in names}}


def _to(batch: dict, device) -> dict:
    return {k: _to(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


def forward(model, batch: dict, objective: Objective) -> dict:
    """Response log-probs (and rewards) of a collated batch; ``model`` is a model or a (possibly
    DDP/DeepSpeed-wrapped) ``PackedForward``."""
    packed: Packed = batch["packed"]
    logp, rewards = as_packed_forward(model)(packed, logps=True, rewards=objective.reward_head)
    ntok = packed.ntok.to(logp.dtype)
    if not objective.paired:
        return {"logp": logp, "ntok": ntok, "ntok_norm": batch.get("ntok_norm", ntok.sum())}
    out = {"logp_w": logp[0::2], "logp_l": logp[1::2], "ntok_w": ntok[0::2], "ntok_l": ntok[1::2]}
    if rewards is not None:
        out |= {"r_w": rewards[0::2], "r_l": rewards[1::2]}
    return out


def _sample_order(n: int, count: int, seed: int) -> np.ndarray:
    """Epoch-wise permutations of range(n), concatenated to ``count`` indices."""
    rng = np.random.default_rng(seed)
    epochs = math.ceil(count / n)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[:count]


def _optimizer(model, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """AdamW; ``fused``: torch's one-kernel update (SmolLM2-135M on 2 CPU cores: 91 ms a step
    against 353 ms for the per-tensor loop; the same update up to rounding)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=fused or None)


def _hf_model(model):
    return getattr(model, "lm", model)  # LMWithRewardHead keeps the Hugging Face model as .lm


def _checkpointing(model, on: bool) -> None:
    """Activation (gradient) checkpointing on the Hugging Face model; transformers 5 renamed it."""
    hf = _hf_model(model)
    if hasattr(hf, "activation_checkpointing_enable"):
        if on:
            hf.activation_checkpointing_enable({"use_reentrant": False})
        else:
            hf.activation_checkpointing_disable()
    elif on:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf.gradient_checkpointing_disable()


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _save_resume(acc: Accelerator, path: Path, meta: dict) -> None:
    """Every rank writes its part under ``path``.tmp; rank 0 then swaps it in by renames only,
    so a job killed at any moment leaves a complete state at ``path`` or ``path``.old."""
    tmp, old = _sibling(path, ".tmp"), _sibling(path, ".old")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp), safe_serialization=False)  # tied embeddings: no safetensors
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / RESUME_META).write_text(json.dumps(meta))  # written last: marks the state complete
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _load_resume(acc: Accelerator, path: Path | None, key: str) -> dict | None:
    for candidate in ([path, _sibling(path, ".old")] if path else []):
        if (candidate / RESUME_META).exists():
            meta = json.loads((candidate / RESUME_META).read_text())
            if meta["key"] != key:
                log.info("ignoring stale resume state %s (different run)", candidate)
                return None
            acc.load_state(str(candidate))
            log.info("resumed from %s", candidate)
            return meta
    return None


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient: the job stops (train.max_nonfinite_steps allows skipping some)."""


def _nonfinite(acc: Accelerator, bad_loss: torch.Tensor, grad_norm) -> bool:
    """Whether this optimizer step saw a non-finite loss (on any rank) or gradient norm; every rank
    gets the same answer (the gradient norm is global already, the loss flags are summed)."""
    flags = bad_loss.reshape(1)
    if grad_norm is not None:
        flags = flags + (~torch.isfinite(torch.as_tensor(grad_norm, device=flags.device))).to(flags.dtype).reshape(1)
    return bool(acc.reduce(flags, "sum").item() > 0)


def remove_resume(path: str | os.PathLike | None) -> None:
    """Delete a job's resume state; the job calls it once its model is written, not when training
    ends, so a job failing in its final evaluation or save resumes from its last saved step."""
    if not path:
        return
    path = Path(path)
    for p in (path, _sibling(path, ".tmp"), _sibling(path, ".old")):
        shutil.rmtree(p, ignore_errors=True)


def train(model, examples: list[Example], objective: Objective, cfg: TrainConfig, pad_id: int,
          resume_path: str | os.PathLike | None = None, run_key: dict | None = None,
          accelerator: Accelerator | None = None) -> list[dict]:
    """Train ``model`` in place; return one metrics dict per optimizer step (the same on every rank).

    ``resume_path`` (a directory outside the job's outputs, so a failed job keeps it) holds the
    state of the last ``save_every`` step; it is used only if ``run_key`` (everything the run
    depends on) hashes the same. The caller deletes it (``remove_resume``) once the model is written.
    """
    acc = accelerator or make_accelerator(cfg)
    rank, world = acc.process_index, acc.num_processes
    micro = _micro_batch(cfg.batch_size, world)
    torch.manual_seed(cfg.seed)
    steps = cfg.total_steps(len(examples))
    per_step = cfg.batch_size * cfg.grad_accum
    order = _sample_order(len(examples), steps * per_step, cfg.seed)
    if cfg.gradient_checkpointing:
        _checkpointing(model, True)
    opt = _optimizer(model, cfg, fused=not (cfg.deepspeed and world > 1))  # DeepSpeed steps its own flat shards
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, steps)
    share = shares_prefixes(model)
    # the whole forward (decoder, response-only LM head, reward head) in one module, as DDP needs
    wrapped, opt, sched = acc.prepare(PackedForward(model), opt, sched)
    # how often states are saved is no part of the run: a state continues under another interval
    train_key = {k: v for k, v in cfg.__dict__.items() if k != "save_every"}
    key = config_hash({"run": run_key, "train": train_key, "n": len(examples), "world": world})
    resume_path = Path(resume_path) if resume_path else None
    meta = _load_resume(acc, resume_path, key)
    start, history = (meta["step"], meta["history"]) if meta else (0, [])
    skipped = history[-1].get("nonfinite_skipped", 0) if history else 0
    if meta:
        log.info("resuming at step %d/%d", start, steps)

    log.info("%s: %d examples, %d steps of %d (batch %d x accum %d), world size %d, %s on %s",
             objective.name, len(examples), steps, per_step, cfg.batch_size, cfg.grad_accum, world,
             acc.distributed_type.value, acc.device)
    wrapped.train()  # first: transformers' train() may reset layer forwards (hub kernels)
    # fewer activations kept for backward (the gated MLPs and RMS norms, drdo.lean_layers)
    with lean_training(model) as n_lean:
        log.info("lean MLP and norm forwards on %d modules", n_lean)
        # loss, tokens/s and ETA at the first step, every tenth of the run and at least every 30 s
        progress = Progress(log, objective.name, steps, "steps", start=start, counts=("tokens",))
        for step in range(start, steps):
            sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=acc.device))
            grad_norm = None
            bad_loss = torch.zeros((), device=acc.device)  # micro-steps of this step with a non-finite loss
            batches = _step_batches(wrapped, examples, order, step, rank, micro, cfg, pad_id, objective, share, acc)
            for batch in batches:
                with acc.accumulate(wrapped):
                    out = forward(wrapped, batch, objective)
                    loss, terms = objective.loss(out, batch["values"])
                    bad_loss += (~torch.isfinite(loss.detach())).to(bad_loss.dtype)
                    acc.backward(loss)
                    skip = False
                    if acc.sync_gradients:
                        grad_norm = acc.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
                        if _nonfinite(acc, bad_loss, grad_norm):
                            skipped += 1
                            _refuse_nonfinite(cfg, step, steps, skipped, acc)
                            skip = True
                    if not skip:  # a skipped step leaves weights and AdamW moments as they were
                        opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                for k, v in {"loss": loss, **terms}.items():
                    # logged in the default dtype: float32, or unrounded in a float64 run (the TRL check)
                    sums[k] += torch.as_tensor(v, device=acc.device).detach().to(torch.get_default_dtype()) / cfg.grad_accum
                if objective.paired:
                    sums["logp_chosen"] += out["logp_w"].detach().mean() / cfg.grad_accum
                    sums["logp_rejected"] += out["logp_l"].detach().mean() / cfg.grad_accum
            names = list(sums)
            means = acc.reduce(torch.stack([sums[k] for k in names]), "mean").tolist()  # over ranks
            history.append({"step": step + 1, "lr": sched.get_last_lr()[0],
                            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                            **dict(zip(names, means)), "nonfinite_skipped": skipped})
            tokens = sum(len(s.input_ids) for i in order[step * per_step:(step + 1) * per_step] for s in examples[i].seqs)
            progress.update(1, " ".join(f"{k}={v:.4g}" for k, v in history[-1].items() if k != "step"), tokens=tokens)
            if resume_path and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < steps:
                _save_resume(acc, resume_path, {"key": key, "step": step + 1, "history": history})
    acc.wait_for_everyone()
    if cfg.gradient_checkpointing:
        _checkpointing(model, False)
    model.eval()
    return history


def _step_batches(wrapped, examples: list[Example], order: np.ndarray, step: int, rank: int, micro: int,
                  cfg: TrainConfig, pad_id: int, objective: Objective, share: bool, acc: Accelerator) -> list[dict]:
    """This rank's micro-batches of optimizer step ``step``, each with what its loss needs to be a
    share of the whole step's loss (every micro-batch, every rank; gradients are averaged over
    both, so each micro-batch's loss is scaled by their number):

    * SFT: the token-mean NLL over the step's tokens, ``ntok_norm`` = the step's target tokens
      over (micro-batches x ranks), not each micro-batch's own mean (micro-batches of short
      sequences would weigh more);
    * an objective with ``whole_batch`` (e-DPO's min over members): its sums over the step, from a
      forward pass without gradients first. Where the step is one micro-batch in one process the
      loss sees the whole batch itself, and this pass is skipped.
    """
    batches = []
    for m in range(cfg.grad_accum):
        lo = (step * cfg.grad_accum + m) * cfg.batch_size + rank * micro  # this rank's shard
        shard = [examples[i] for i in order[lo:lo + micro]]
        batches.append(_to(collate(shard, pad_id, objective.paired, cfg.pack_tokens, share), acc.device))
    if not objective.paired:
        n = torch.tensor(float(sum(b["packed"].n_targets for b in batches)), device=acc.device)
        norm = acc.reduce(n, "mean") / cfg.grad_accum
        for b in batches:
            b["ntok_norm"] = norm
    if objective.whole_batch is not None and cfg.grad_accum * acc.num_processes > 1:
        with torch.no_grad():
            total = sum(objective.whole_batch(forward(wrapped, b, objective), b["values"]) for b in batches)
        total = acc.reduce(total, "sum")
        for b in batches:
            b["values"][WHOLE_BATCH] = total
    return batches


def _refuse_nonfinite(cfg: TrainConfig, step: int, steps: int, skipped: int, acc: Accelerator) -> None:
    """Stop the job at a non-finite step, unless train.max_nonfinite_steps still allows skipping it."""
    where = f"non-finite loss or gradient at optimizer step {step + 1} of {steps}"
    if skipped > cfg.max_nonfinite_steps:
        raise NonFiniteError(f"{where} ({skipped} such step(s), config key train.max_nonfinite_steps="
                             f"{cfg.max_nonfinite_steps} allows {cfg.max_nonfinite_steps}): lower the learning rate "
                             "or check the input tables for infinite values; no model was written")
    if acc.distributed_type.value == "DEEPSPEED":
        raise NonFiniteError(f"{where}: DeepSpeed has already applied it (its optimizer steps inside backward), "
                             "so it cannot be skipped (train.max_nonfinite_steps applies to DDP and single-process "
                             "runs only)")
    log.warning("%s: skipped (%d of at most %d, train.max_nonfinite_steps)", where, skipped,
                cfg.max_nonfinite_steps)


@torch.no_grad()
def evaluate(model, examples: list[Example], objective: Objective, pad_id: int, batch_size: int,
             budget: int = 0, dtype: str = "float32") -> dict:
    """The objective's loss terms over all of ``examples`` as one batch (e.g. validation pair
    accuracy), whatever ``batch_size`` cuts them into: pair terms are means over pairs, SFT's NLL
    a mean over all tokens, e-DPO's min over members taken on the whole set's member means.
    ``dtype``: the run's ``train.dtype``; the forward runs under its autocast, as in training."""
    model.eval()
    device = next(model.parameters()).device
    passes = []  # (outputs, values, examples) per batch: per-pair or per-token values, no graph
    n_tokens = 0  # the set's target tokens, as training counts them (Packed.n_targets)
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo:lo + batch_size]
        batch = _to(collate(chunk, pad_id, objective.paired, budget, shares_prefixes(model)), device)
        n_tokens += batch["packed"].n_targets
        with autocast(dtype, device):
            passes.append((forward(model, batch, objective), batch["values"], len(chunk)))
    if not objective.paired:  # each batch's NLL sum over the whole set's tokens: the terms add up
        passes = [({**out, "ntok_norm": n_tokens}, values, len(examples)) for out, values, _ in passes]
    if objective.whole_batch is not None:
        total = sum(objective.whole_batch(out, values) for out, values, _ in passes)
        passes = [(out, {**values, WHOLE_BATCH: total}, n) for out, values, n in passes]
    sums: dict[str, float] = defaultdict(float)
    for out, values, n in passes:
        loss, terms = objective.loss(out, values)
        for k, v in {"loss": loss, **terms}.items():
            sums[k] += float(v) * n
    return {k: v / len(examples) for k, v in sums.items()}
