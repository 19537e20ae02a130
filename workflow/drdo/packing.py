"""Padding-free packing, shared prompts for pairs, and response-only log-probs.

Encoded sequences (``batching.Encoded``) are laid out in a few rows of at most a token budget
instead of one padded row each. Each sequence keeps its own position ids (restarting at 0), and
attention stays inside it. A pair (chosen, rejected) is one *group*: their common token prefix
(the prompt, at least) is stored once, then the chosen-only tokens, then the rejected-only
tokens. The rejected tokens see the prefix but not the chosen ones, and both continue the
prefix's position ids. So every sequence gets exactly the hidden states it would get alone (a
causal LM's state at a token depends only on the tokens before it). The only differences are
float summation order.

A slot's attention is described by its ``group`` (the pair or sequence it belongs to; -1 for
padding) and ``branch`` (0: shared by the whole group; 1: chosen only; 2: rejected only; a group
of k responses to one prompt, scored together, has branches 1..k the same way). Query
q sees key k iff k <= q in the row, same group, and k's branch is 0 or q's branch. Which kernel
applies it is picked in one place, :func:`attention_inputs`, from the mask transformers registers
for the model's ``attn_implementation`` (what the kernel needs, not its name): a dense 4D mask for
SDPA or eager attention (CPU, and any GPU without the kernels below), a ``BlockMask`` for flex
attention, and for varlen kernels (flash-attention 2/3/4 and the hub's flash kernels), which
only take block-causal segments cut where the position ids restart, every sequence whole (its
prompt copied) in one row: :class:`PackedForward` lays any packed batch out that way first
(:func:`whole_sequences`), since a rejected response continuing its prompt's positions would
otherwise share the chosen one's segment and attend to it. The flex and flash paths are for
GPUs; flex is tested on CPU (compiled), the varlen path with a CPU kernel that takes what
flash-attention takes.

Log-probs are computed from the final hidden states at the positions that predict a response
token only (LM head and the family's own logit transforms, ``logits.lm_logits``, then
log-softmax, then the target's entry), so memory scales with response tokens x vocabulary, not
with row length x vocabulary. A reward-only forward (tables, scoring with the Oracle) never
applies the LM head.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.masking_utils import (ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask, flex_attention_mask,
                                       sdpa_mask)

from .batching import Encoded
from .logits import check_lm_logits, lm_logits

try:
    from transformers.utils.generic import is_flash_attention_requested
except ImportError:  # transformers < 5: the same test, by name
    def is_flash_attention_requested(config) -> bool:
        return "flash" in (config._attn_implementation or "")

SHARED, CHOSEN, REJECTED = 0, 1, 2  # branch ids; sequence j of a group is branch j + 1
# budget 0: rows of twice the mean group, at most this (unless a group is longer). With a dense
# mask, attention time and memory grow with the row's width squared: on CPU, SmolLM2 pairs of
# ~460 tokens took 1.6x the time and 1.5x the memory two to a row than one to a row.
AUTO_ROW_CAP = 256


@dataclass
class Packed:
    """A packed batch of ``n_seqs`` sequences; ``*_index`` are flat indices into rows * width."""

    input_ids: torch.Tensor  # [R, L]
    position_ids: torch.Tensor  # [R, L]
    group: torch.Tensor  # [R, L], -1 on padding
    branch: torch.Tensor  # [R, L]
    pred_index: torch.Tensor  # [T] slot whose hidden state predicts target T
    target: torch.Tensor  # [T] the predicted token id
    target_seq: torch.Tensor  # [T] which sequence the target belongs to
    last_index: torch.Tensor  # [S] slot of each sequence's last token (the reward's reading)
    ntok: torch.Tensor  # [S] response tokens per sequence (>= 1, as in the padded path)
    n_targets: int  # true total of response tokens (no clamping), for token-mean losses
    seq_group: torch.Tensor  # [S] the group each sequence is in
    seq_branch: torch.Tensor  # [S] its own branch (SHARED for a sequence alone in its group)

    def to(self, device) -> "Packed":
        return Packed(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in self.__dict__.items()})

    @property
    def n_seqs(self) -> int:
        return self.last_index.shape[0]


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix all of ``seqs`` share."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for other in seqs[1:]:
        if other[:n] != first[:n]:  # compared in C; the position only where they differ
            n = int(np.flatnonzero(np.asarray(first[:n]) != np.asarray(other[:n]))[0])
    return n


def pack(groups: list[list[Encoded]], pad_id: int, budget: int = 0, share_prefix: bool = True) -> Packed:
    """Pack ``groups`` (each one sequence, a [chosen, rejected] pair, or any k sequences of one
    prompt, such as a policy's responses at k temperatures) into rows.

    With ``share_prefix``, a group's common prefix is stored once and sequence j's remaining
    tokens follow it as branch j + 1 (a pair: CHOSEN, then REJECTED). Sequences are numbered in
    the order given: group 0's sequences first, then group 1's, and so on, whatever the layout.
    A row holds whole groups up to ``budget`` tokens (at least the longest group; 0: twice the
    mean group capped at ``AUTO_ROW_CAP``, which measured best on CPU), placed first-fit
    decreasing (longest first, ties in the given order), so the layout is a pure function of
    the input.
    """
    layouts = []  # per group: tokens, branch ids, per sequence the row offsets of its tokens
    for seqs in groups:
        shared = _common_prefix([s.input_ids for s in seqs]) if len(seqs) > 1 and share_prefix else 0
        tokens, branch, maps = list(seqs[0].input_ids[:shared]), [SHARED] * shared, []
        for j, s in enumerate(seqs):  # alone, or a group without sharing: each sequence isolated
            own = SHARED if len(seqs) == 1 else CHOSEN + j
            maps.append(list(range(shared)) + list(range(len(tokens), len(tokens) + len(s.input_ids) - shared)))
            tokens += s.input_ids[shared:]
            branch += [own] * (len(s.input_ids) - shared)
        layouts.append((tokens, branch, maps))
    lengths = [len(t) for t, _, _ in layouts]
    if budget <= 0:  # short groups two to a row (little padding); long ones alone (attention ~ width^2)
        budget = min(math.ceil(2 * sum(lengths) / len(lengths)), AUTO_ROW_CAP)
    budget = max(budget, *lengths)
    rows: list[list[int]] = []  # group indices per row
    fill: list[int] = []
    for g in sorted(range(len(layouts)), key=lambda g: -lengths[g]):  # first-fit decreasing (stable sort)
        tokens = layouts[g][0]
        r = next((i for i, f in enumerate(fill) if f + len(tokens) <= budget), None)
        if r is None:
            rows.append([])
            fill.append(0)
            r = len(rows) - 1
        rows[r].append(g)
        fill[r] += len(tokens)
    width = max(fill)
    first_seq = np.cumsum([0] + [len(seqs) for seqs in groups])  # sequence numbers: in the order given
    n = int(first_seq[-1])
    size = len(rows) * width
    ids, pos = np.full(size, pad_id, dtype=np.int64), np.zeros(size, dtype=np.int64)
    grp, br = np.full(size, -1, dtype=np.int64), np.zeros(size, dtype=np.int64)
    last, ntok, sgroup, sbranch = (np.zeros(n, dtype=np.int64) for _ in range(4))
    pred, target, tseq = [], [], []  # response tokens in row order
    for r, members in enumerate(rows):
        base = r * width
        for g in members:
            tokens, branch, maps = layouts[g]
            span = slice(base, base + len(tokens))
            ids[span], grp[span], br[span] = tokens, g, branch
            for j, (seq, slots) in enumerate(zip(groups[g], maps)):
                s = first_seq[g] + j
                flat = base + np.asarray(slots, dtype=np.int64)
                pos[flat] = np.arange(len(flat))
                # logits at t-1 predict token t (as response_logps)
                response = np.flatnonzero(np.asarray(seq.loss_mask[1:len(flat)], dtype=bool)) + 1
                pred.append(flat[response - 1])
                target.append(np.asarray(seq.input_ids, dtype=np.int64)[response])
                tseq.append(np.full(len(response), s, dtype=np.int64))
                last[s], ntok[s] = flat[-1], max(len(response), 1)
                sgroup[s], sbranch[s] = g, SHARED if len(groups[g]) == 1 else CHOSEN + j
            base += len(tokens)
    as_long = lambda x: torch.from_numpy(np.asarray(x, dtype=np.int64))  # noqa: E731
    cat = lambda xs: as_long(np.concatenate(xs) if xs else [])  # noqa: E731
    shape = (len(rows), width)
    return Packed(as_long(ids).view(shape), as_long(pos).view(shape), as_long(grp).view(shape),
                  as_long(br).view(shape), cat(pred), cat(target), cat(tseq), as_long(last), as_long(ntok),
                  sum(len(t) for t in target), as_long(sgroup), as_long(sbranch))


def whole_sequences(packed: Packed) -> Packed:
    """The same sequences in one row, each whole (a shared prompt copied to each of its
    sequences), one after another, no padding: what a varlen kernel can attend correctly."""
    flat_group, flat_branch = packed.group.reshape(-1), packed.branch.reshape(-1)
    slots = [((flat_group == g) & ((flat_branch == SHARED) | (flat_branch == b))).nonzero().squeeze(1)
             for g, b in zip(packed.seq_group.tolist(), packed.seq_branch.tolist())]
    lengths = torch.tensor([len(x) for x in slots], device=flat_group.device)
    start = lengths.cumsum(0) - lengths
    order = torch.cat(slots)
    pred = packed.pred_index.clone()
    for s, own in enumerate(slots):  # a target's slot, within its own sequence's copy
        mine = packed.target_seq == s
        pred[mine] = start[s] + torch.searchsorted(own, packed.pred_index[mine])
    seq = torch.repeat_interleave(torch.arange(len(slots), device=flat_group.device), lengths)
    return Packed(packed.input_ids.reshape(-1)[order][None], packed.position_ids.reshape(-1)[order][None],
                  seq[None], torch.zeros_like(seq)[None], pred, packed.target, packed.target_seq,
                  start + lengths - 1, packed.ntok, packed.n_targets, torch.arange(len(slots), device=seq.device),
                  torch.zeros(len(slots), dtype=torch.long, device=seq.device))


def has_shared_prefixes(packed: Packed) -> bool:
    """Whether a group stores a prefix once for several sequences (slots of branch 0 and others)."""
    shared = packed.group[(packed.branch == SHARED) & (packed.group >= 0)]
    return bool(torch.isin(packed.group[packed.branch != SHARED], shared).any())


def dense_mask(packed: Packed) -> torch.Tensor:
    """[R, 1, L, L] boolean: True where a query slot may attend to a key slot."""
    g, b = packed.group, packed.branch
    width = g.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=g.device).tril()
    same = g[:, :, None] == g[:, None, :]
    branch_ok = (b[:, None, :] == SHARED) | (b[:, None, :] == b[:, :, None])
    return (same & branch_ok & causal)[:, None]


def flex_block_mask(packed: Packed):
    """The same mask as a flex-attention ``BlockMask`` (block-sparse: skipped blocks cost nothing)."""
    from torch.nn.attention.flex_attention import create_block_mask

    g, b = packed.group, packed.branch

    def mask_mod(row, head, q, k):
        return (k <= q) & (g[row, q] == g[row, k]) & ((b[row, k] == SHARED) | (b[row, k] == b[row, q]))

    rows, width = g.shape
    return create_block_mask(mask_mod, rows, None, width, width, device=g.device)


def varlen_kernel(model) -> bool:
    """Whether the model's attention kernel only takes block-causal segments (``cu_seqlens``, cut
    where the position ids restart), no arbitrary mask: transformers' own notion, i.e. a kernel
    registered with flash-attention's mask function (flash_attention_2/3/4, and hub kernels with a
    ``flash_attn_varlen_func`` once loaded) or one whose name asks for flash attention."""
    config = _hf(model).config
    return (ALL_MASK_ATTENTION_FUNCTIONS.get(config._attn_implementation) is flash_attention_mask
            or is_flash_attention_requested(config))


def shares_prefixes(model) -> bool:
    """Whether the model's attention kernel takes arbitrary masks (all but the varlen kernels), so
    a pair's prompt can be stored once. (Without, :class:`PackedForward` copies it anyway.)"""
    return not varlen_kernel(model)


def attention_inputs(model, packed: Packed) -> dict:
    """The attention arguments for the model's kernel: the one place that picks it, by the mask
    transformers registers for it. A varlen kernel takes no mask: refused a shared prefix, which
    it could only attend as one segment (``whole_sequences`` lays a batch out for it)."""
    hf = _hf(model)
    if varlen_kernel(model):  # one row; cu_seqlens come from position ids restarting at 0
        if has_shared_prefixes(packed):
            raise ValueError(f"attention kernel {hf.config._attn_implementation!r} takes only block-causal "
                             "segments: a shared prompt would let one response attend to another; lay the batch "
                             "out with packing.whole_sequences (PackedForward does)")
        return {"attention_mask": None, "position_ids": packed.position_ids.reshape(1, -1)}
    _check_window(hf, packed)
    mask_function = ALL_MASK_ATTENTION_FUNCTIONS.get(hf.config._attn_implementation)
    if mask_function is flex_attention_mask:
        return {"attention_mask": flex_block_mask(packed), "position_ids": packed.position_ids}
    mask = dense_mask(packed)
    dtype = next(hf.parameters()).dtype
    if mask_function is sdpa_mask:
        # SDPA turns a boolean mask into this additive one in every layer and keeps each copy for
        # the backward (SmolLM2, 30 layers, 4 rows of 529: 130 MB); made once, all layers share it
        if torch.is_autocast_enabled(mask.device.type):
            dtype = torch.get_autocast_dtype(mask.device.type)
        masked = float("-inf")
    else:  # eager and others add the mask to the scores
        masked = torch.finfo(dtype).min
    mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, masked)
    return {"attention_mask": mask, "position_ids": packed.position_ids}


def _check_window(hf, packed: Packed) -> None:
    """Refuse sequences longer than a sliding attention window: transformers hands a 4D mask to
    every layer as it is, so sliding layers would see the whole sequence (varlen kernels apply
    the window themselves)."""
    window = getattr(hf.config, "sliding_window", None)
    layer_types = getattr(hf.config, "layer_types", None)
    if not window or (layer_types is not None and "sliding_attention" not in layer_types):
        return
    longest = int(packed.position_ids.max()) + 1
    if longest > window:
        raise ValueError(f"{hf.config.model_type}: a sliding attention window of {window} tokens, which packed "
                         f"attention masks do not apply, and a sequence of {longest} tokens; set lengths.max_length "
                         f"to at most {window}, or model.attn_implementation to a flash-attention kernel")


# Token mixers that carry a state along the row (state-space, linear-attention, short-convolution
# and recurrent layers, as transformers' configs name them in layer_types), and families of such
# layers without layer_types: in a packed row one sequence's state would run into the next.
STATEFUL_LAYER_TYPES = {"linear_attention", "mamba", "mamba2", "conv", "hybrid", "recurrent"}
STATEFUL_FAMILIES = {"rwkv", "xlstm"}
_packable: weakref.WeakSet = weakref.WeakSet()


def _alibi(config) -> bool:
    """ALiBi biases attention by slot distance in the row, not by position ids (Bloom, MPT, Falcon
    with ``alibi``): a rejected response after the chosen one would be that much farther from its
    prompt, and Bloom's and Falcon's attention takes no 4D mask."""
    return (config.model_type == "bloom" or bool(getattr(config, "alibi", False))
            or bool(getattr(getattr(config, "attn_config", None), "alibi", False)))


def check_packable(hf) -> None:
    """Refuse a model that packing would score wrongly (once per model): packing relies on attention
    masks and position ids alone keeping sequences apart and placing their tokens. A causal
    convolution in the decoder's layers (``nn.Conv1d``: Mamba's, Gated DeltaNet's, LFM2's) counts
    as a state whatever the config says."""
    if hf in _packable:
        return
    config = hf.config
    stateful = sorted(set(getattr(config, "layer_types", None) or ()) & STATEFUL_LAYER_TYPES)
    if config.model_type in STATEFUL_FAMILIES:
        stateful.append(config.model_type)
    decoder = hf.get_decoder()
    layers = getattr(decoder, "layers", decoder)  # not an audio or vision tower's convolutions
    prefix = "layers." if layers is not decoder else ""
    stateful += [prefix + name for name, m in layers.named_modules() if isinstance(m, nn.Conv1d)][:1]
    why = (f"its layers carry a state from token to token ({', '.join(stateful)}), which would run from one "
           "packed sequence into the next" if stateful else
           "ALiBi position biases, which follow a token's place in the packed row, not its position id"
           if _alibi(config) else None)
    if why:
        raise ValueError(f"{config.model_type} ({type(hf).__name__}): {why}; drdo packs every batch and supports "
                         "decoders that mix tokens by attention alone, placed by position ids (RoPE, learned "
                         "positions)")
    _packable.add(hf)


def _hf(model):
    return getattr(model, "lm", model)  # LMWithRewardHead keeps the Hugging Face model as .lm


def final_hidden(model, packed: Packed) -> torch.Tensor:
    """Final (normed) hidden states of the decoder, [R * L, H]; no LM head.

    With a dense mask, a row of ``AUTO_ROW_CAP`` tokens or more (a group alone in its row) runs at
    its own width, with the rows of that width, and the shorter rows run together: padding costs
    no compute where it would cost most (SmolLM2 pairs of 440-530 tokens, one to a row: up to 11%
    of a batch's slots were padding, and their activations raised the peak memory as much).
    """
    fill = (packed.group >= 0).sum(1)  # a row's groups start at slot 0: its padding is its tail
    run = torch.where(fill >= AUTO_ROW_CAP, fill, 0)  # rows decoded together share a run
    dense = not varlen_kernel(model) and ALL_MASK_ATTENTION_FUNCTIONS.get(
        _hf(model).config._attn_implementation) is not flex_attention_mask
    if not dense or bool((run == run[0]).all()):
        return _decode(model, packed)
    width, hidden, order = packed.input_ids.shape[1], [], []
    for r in run.unique().tolist():
        rows = (run == r).nonzero().squeeze(1)
        w = int(fill[rows].max())
        part = replace(packed, **{k: getattr(packed, k)[rows, :w] for k in ROW_TENSORS})
        hidden.append(F.pad(_decode(model, part).view(len(rows), w, -1), (0, 0, 0, width - w)))
        order.append(rows)
    hidden = torch.cat(hidden)[torch.cat(order).argsort()]  # back in the packed rows' order
    return hidden.reshape(-1, hidden.shape[-1])


ROW_TENSORS = ("input_ids", "position_ids", "group", "branch")  # all that _decode reads


def _decode(model, packed: Packed) -> torch.Tensor:
    """The decoder on all of ``packed``'s rows."""
    check_packable(_hf(model))
    decoder = _hf(model).get_decoder()
    kwargs = attention_inputs(model, packed)
    ids = packed.input_ids.reshape(kwargs["position_ids"].shape)  # flat slot indices are unchanged
    out = decoder(input_ids=ids, use_cache=False, **kwargs)
    hidden = out.last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1])


def target_logps(model, hidden: torch.Tensor, packed: Packed, chunk: int = 4096) -> torch.Tensor:
    """Per-sequence sum of response-token log-probs, from the predicting slots only.

    The LM head (with the family's logit transforms, checked once per model against its own
    forward: ``logits.check_lm_logits``) and the log-softmax run on at most ``chunk`` positions at
    a time, so peak memory is bounded by chunk x vocabulary whatever the batch.
    """
    hf = _hf(model)
    check_lm_logits(hf)
    parts = []
    for lo in range(0, packed.pred_index.shape[0], chunk):
        logits = lm_logits(hf, hidden[packed.pred_index[lo:lo + chunk]])
        tgt = packed.target[lo:lo + chunk, None]
        parts.append(torch.gather(F.log_softmax(logits, dim=-1), 1, tgt).squeeze(1))
    logp = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    return torch.zeros(packed.n_seqs, dtype=logp.dtype, device=logp.device).index_add(0, packed.target_seq, logp)


class PackedForward(nn.Module):
    """Per-sequence response log-probs (and rewards) of a packed batch.

    Wraps a Hugging Face causal LM or an ``LMWithRewardHead`` (sharing its parameters), so the
    whole computation runs inside one ``forward``, as DDP and DeepSpeed need.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, packed: Packed, logps: bool = True, rewards: bool = False):
        if varlen_kernel(self.model):  # whoever packed it: no shared prompt, no padding
            packed = whole_sequences(packed)
        hidden = final_hidden(self.model, packed)
        logp = target_logps(self.model, hidden, packed) if logps else None
        reward = None
        if rewards:
            reward = self.model.reward(hidden[packed.last_index])
        return logp, reward


def as_packed_forward(model: nn.Module) -> nn.Module:
    """``model`` itself if it already is a (possibly DDP/DeepSpeed-wrapped) PackedForward."""
    return model if isinstance(getattr(model, "module", model), PackedForward) else PackedForward(model)
