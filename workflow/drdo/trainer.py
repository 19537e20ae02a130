"""One training loop for every objective (SFT, Oracle, ensemble RMs, DPO, e-DPO, DRDO).

AdamW (no decay on biases and norms), linear warm-up then cosine decay, gradient
accumulation, gradient clipping, a seed. Chosen and rejected go through one concatenated
forward pass. The sample order is a pure function of (seed, step), so a job killed midway
resumes from its last saved state and finishes exactly as an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from .batching import Encoded, pad_batch
from .io import config_hash
from .modeling import LMWithRewardHead, response_logps
from .objectives import Objective

log = logging.getLogger("drdo.train")


@dataclass
class Example:
    seqs: list[Encoded]  # [chosen, rejected] for pairs, [sequence] otherwise
    values: dict[str, float] = field(default_factory=dict)  # precomputed table columns


@dataclass
class TrainConfig:
    lr: float
    batch_size: int
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 0  # resume-state interval in optimizer steps; 0 = never

    @classmethod
    def from_params(cls, p: dict) -> "TrainConfig":
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})

    def total_steps(self, n_examples: int) -> int:
        if self.max_steps:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n_examples / (self.batch_size * self.grad_accum)))


def collate(examples: list[Example], pad_id: int, paired: bool) -> dict:
    """Pad a batch; pairs become one [chosen..., rejected...] batch of 2B rows."""
    seqs = [e.seqs[0] for e in examples] + ([e.seqs[1] for e in examples] if paired else [])
    batch = pad_batch(seqs, pad_id)
    names = examples[0].values.keys()
    batch["values"] = {k: torch.tensor([e.values[k] for e in examples], dtype=torch.float32) for k in names}
    return batch


def forward(model, batch: dict, paired: bool) -> dict:
    ids, attn = batch["input_ids"], batch["attention_mask"]
    if isinstance(model, LMWithRewardHead):
        logits, rewards = model(ids, attn)
    else:
        logits, rewards = model(input_ids=ids, attention_mask=attn).logits, None
    logp, ntok = response_logps(logits, ids, batch["loss_mask"])
    if not paired:
        return {"logp": logp, "ntok": ntok}
    b = ids.shape[0] // 2
    out = {"logp_w": logp[:b], "logp_l": logp[b:], "ntok_w": ntok[:b], "ntok_l": ntok[b:]}
    if rewards is not None:
        out |= {"r_w": rewards[:b], "r_l": rewards[b:]}
    return out


def _sample_order(n: int, count: int, seed: int) -> np.ndarray:
    """Epoch-wise permutations of range(n), concatenated to ``count`` indices."""
    rng = np.random.default_rng(seed)
    epochs = math.ceil(count / n)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[:count]


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def _save_resume(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(model, examples: list[Example], objective: Objective, cfg: TrainConfig, pad_id: int,
          resume_path: str | os.PathLike | None = None, run_key: dict | None = None) -> list[dict]:
    """Train in place; return one metrics dict per optimizer step.

    ``resume_path`` (outside the job's outputs, so a failed job keeps it) holds the state
    of the last ``save_every`` step; it is used only if ``run_key`` (everything the run
    depends on) hashes the same, and deleted when training completes.
    """
    torch.manual_seed(cfg.seed)
    steps = cfg.total_steps(len(examples))
    per_step = cfg.batch_size * cfg.grad_accum
    order = _sample_order(len(examples), steps * per_step, cfg.seed)
    opt = _optimizer(model, cfg)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, steps)
    key = config_hash({"run": run_key, "train": cfg.__dict__, "n": len(examples)})
    history: list[dict] = []
    start = 0
    resume_path = Path(resume_path) if resume_path else None
    if resume_path and resume_path.exists():
        state = torch.load(resume_path, weights_only=False)
        if state["key"] == key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start, history = state["step"], state["history"]
            torch.set_rng_state(state["torch_rng"])
            log.info("resumed from %s at step %d/%d", resume_path, start, steps)
        else:
            log.info("ignoring stale resume state %s (different run)", resume_path)

    log.info("%s: %d examples, %d steps of %d (batch %d x accum %d)", objective.name, len(examples),
             steps, per_step, cfg.batch_size, cfg.grad_accum)
    model.train()
    for step in range(start, steps):
        sums: dict[str, float] = defaultdict(float)
        opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            lo = (step * cfg.grad_accum + micro) * cfg.batch_size
            batch = collate([examples[i] for i in order[lo:lo + cfg.batch_size]], pad_id, objective.paired)
            out = forward(model, batch, objective.paired)
            loss, terms = objective.loss(out, batch["values"])
            (loss / cfg.grad_accum).backward()
            sums["loss"] += loss.item() / cfg.grad_accum
            for k, v in terms.items():
                sums[k] += float(v) / cfg.grad_accum
            if objective.paired:
                sums["logp_chosen"] += out["logp_w"].mean().item() / cfg.grad_accum
                sums["logp_rejected"] += out["logp_l"].mean().item() / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        history.append({"step": step + 1, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm.item(), **sums})
        if step == start or (step + 1) % max(1, steps // 10) == 0:
            log.info("step %d/%d %s", step + 1, steps,
                     " ".join(f"{k}={v:.4g}" for k, v in history[-1].items() if k != "step"))
        if resume_path and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < steps:
            _save_resume(resume_path, {"key": key, "step": step + 1, "history": history,
                                       "model": model.state_dict(), "optimizer": opt.state_dict(),
                                       "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state()})
    if resume_path and resume_path.exists():
        resume_path.unlink()
    model.eval()
    return history


@torch.no_grad()
def evaluate(model, examples: list[Example], objective: Objective, pad_id: int, batch_size: int) -> dict:
    """Mean of the objective's loss terms over ``examples`` (e.g. validation pair accuracy)."""
    model.eval()
    sums: dict[str, float] = defaultdict(float)
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo:lo + batch_size]
        batch = collate(chunk, pad_id, objective.paired)
        loss, terms = objective.loss(forward(model, batch, objective.paired), batch["values"])
        for k, v in {"loss": loss, **terms}.items():
            sums[k] += float(v) * len(chunk)
    return {k: v / len(examples) for k, v in sums.items()}
