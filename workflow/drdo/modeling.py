"""Models: loading, the causal LM with a linear reward head, and response log-probs.

A checkpoint directory is a plain Hugging Face model (``AutoModelForCausalLM.from_pretrained``
loads it) plus its tokenizer, and, for reward models and the DRDO student, the reward head
in ``reward_head.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

HEAD_FILE = "reward_head.safetensors"


def load_tokenizer(name_or_path: str | os.PathLike, revision: str | None = None):
    """``revision``: a hub model's commit, tag or branch (model.revision); None: the default branch."""
    tok = AutoTokenizer.from_pretrained(str(name_or_path), revision=revision)
    if tok.pad_token is None:  # many causal LMs ship without one
        tok.pad_token = tok.eos_token
    return tok


def pretrained_kwargs(params: dict) -> dict:
    """The ``from_pretrained`` keyword arguments a stage's params set, for every model it runs:
    the attention kernel (model.attn_implementation: sdpa, eager, flex_attention,
    flash_attention_2/3, or a hub kernel such as kernels-community/flash-attn2)."""
    return {"attn_implementation": params.get("attn_implementation", "sdpa")}


def load_causal_lm(name_or_path: str | os.PathLike, dtype: str = "float32", dropout: bool = True,
                   **pretrained) -> PreTrainedModel:
    """``dropout=False`` for every model whose log-probs are compared with a reference or
    with each other (alignment, reward models, scoring): see :func:`disable_dropout`.
    ``pretrained``: more ``from_pretrained`` arguments (:func:`pretrained_kwargs`)."""
    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=getattr(torch, dtype), **pretrained)
    except (ImportError, ValueError) as e:  # e.g. flash-attention not installed, a hub kernel not cached
        impl = pretrained.get("attn_implementation")
        if impl in (None, "sdpa"):
            raise
        raise ValueError(f"loading {name_or_path} with config key model.attn_implementation={impl!r}: {e}") from e
    model.config.use_cache = False  # training and scoring never reuse the KV cache
    if not dropout:
        disable_dropout(model)
    return model


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def for_inference(model: nn.Module) -> nn.Module:
    """A frozen model (tables, generation, scoring) on the GPU when there is one.

    It keeps the dtypes it was loaded with: load it in its compute dtype
    (``load_causal_lm(path, dtype)``, ``LMWithRewardHead.from_pretrained(path, dtype=dtype)``).
    ``model.to(bfloat16)`` would also round the float32 buffers ``from_pretrained`` keeps, such as
    the rotary frequencies (``inv_freq``): a bf16 table or generation would then use another
    position encoding than training did (cos of the angle off by up to 0.36 near position 2,000).
    """
    return model.to(inference_device()).eval().requires_grad_(False)


def cast_parameters(model: nn.Module, dtype: str) -> nn.Module:
    """Cast the floating parameters of ``model`` in place to ``dtype``; buffers keep theirs
    (see :func:`for_inference`), and a reward head stays fp32 (``LMWithRewardHead.reward``). Used to
    save a checkpoint in ``train.save_dtype``."""
    target = getattr(torch, dtype)
    for p in getattr(model, "lm", model).parameters():
        if p.is_floating_point():
            p.data = p.data.to(target)
    return model


def disable_dropout(model: nn.Module) -> nn.Module:
    """Turn every dropout off, also in train mode (as TRL's ``disable_dropout``).

    With dropout the policy's log-probs at step 0 differ from the reference's, so the DPO
    loss does not start at log 2 and the DRDO/e-DPO margins are noisy. ``nn.Dropout``
    modules get p = 0; many models (OPT, Llama, Phi-3) also keep the rate as a float
    attribute passed to ``F.dropout`` (``dropout``, ``attention_dropout``, ``layerdrop``...),
    which are zeroed too. The saved config is left alone.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if ("dropout" in name or name == "layerdrop") and isinstance(value, float):
                setattr(module, name, 0.0)
    return model


def hidden_width(lm: PreTrainedModel) -> int:
    """Width of the last hidden state (what the LM head reads). OPT-350M projects its
    1,024-wide decoder output to ``word_embed_proj_dim`` = 512 before the LM head."""
    out = lm.get_output_embeddings()
    if out is not None and getattr(out, "weight", None) is not None:
        return out.weight.shape[1]
    return getattr(lm.config, "word_embed_proj_dim", None) or lm.config.hidden_size


class LMWithRewardHead(nn.Module):
    """Causal LM plus a linear reward on the last non-padding token's final hidden state.

    The LM head is kept, so the same forward gives token log-probs and a scalar reward
    (the Oracle of Eq. 5 and the DRDO student, which "can do both").
    """

    def __init__(self, lm: PreTrainedModel, head: nn.Linear | None = None, head_seed: int = 0):
        super().__init__()
        self.lm = lm
        if head is None:
            hidden = hidden_width(lm)
            head = nn.Linear(hidden, 1)
            g = torch.Generator().manual_seed(head_seed)
            with torch.no_grad():
                head.weight.normal_(0.0, 1.0 / (hidden + 1) ** 0.5, generator=g)
                head.bias.zero_()
        self.head = head.float()  # fp32 whatever the trunk's dtype: see reward()

    def reward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The scalar reward of final hidden states ``[..., H]``, computed in fp32 outside autocast.

        A reward is a large common offset plus a small spread between responses (the last token is
        the same EOS for all), so bf16 output, 3 significant digits, rounds away much of what
        distinguishes them: a frozen bf16 table's rewards were off by 0.35 of their spread on an
        H200, 0.14 on CPU. The head is one vector, so fp32 costs nothing."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(hidden.float()).squeeze(-1)

    def forward(self, input_ids, attention_mask):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        last = last_token_index(attention_mask)
        hidden = out.hidden_states[-1][torch.arange(input_ids.shape[0]), last]
        return out.logits, self.reward(hidden)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.lm.save_pretrained(path)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, Path(path) / HEAD_FILE)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, new_head: bool = False, head_seed: int = 0,
                        dtype: str = "float32", dropout: bool = False, **pretrained):
        """Load a reward model (``new_head=False``: its head file must exist), or start one
        from a plain LM (``new_head=True``: a fresh head seeded by ``head_seed``, as the
        Oracle, the ensemble members and the DRDO student do from SFT). ``pretrained``: as
        :func:`load_causal_lm`."""
        head_file = Path(path) / HEAD_FILE
        if not new_head and not head_file.exists():
            raise FileNotFoundError(f"{path}: no {HEAD_FILE}; this is not a trained reward model "
                                    "(a fresh head would give random rewards)")
        model = cls(load_causal_lm(path, dtype, dropout=dropout, **pretrained), head_seed=head_seed)
        if not new_head:
            model.head.load_state_dict(load_file(head_file))
        return model


def has_reward_head(path: str | os.PathLike) -> bool:
    return (Path(path) / HEAD_FILE).exists()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token of each row (works for left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask * positions).argmax(dim=1)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits up to fp32 for the log-softmax; fp64 stays fp64 (the precision checks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def response_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor):
    """Sum of the response tokens' log-probs and their count, per sequence.

    ``loss_mask`` marks response tokens; logits at position t predict token t+1, so both
    are shifted by one. Callers aggregate (sum, or mean = sum / count).
    """
    logps = torch.gather(F.log_softmax(at_least_fp32(logits[:, :-1]), dim=-1), 2,
                         input_ids[:, 1:, None]).squeeze(-1)
    mask = loss_mask[:, 1:].to(logps.dtype)
    return (logps * mask).sum(-1), mask.sum(-1).clamp(min=1)
