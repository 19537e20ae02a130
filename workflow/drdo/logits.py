"""A causal LM's logits from its final hidden states, as its own forward computes them.

The response-only log-probs (``packing.target_logps``) apply the LM head themselves, bypassing
the model's forward, so they must also apply what a family's forward does to the head's output
(transformers' modeling code, by ``model_type``): Gemma 2/3 and kin cap the logits softly
(``final_logit_softcapping``), Granite divides them by ``logits_scaling`` (MiniCPM3 divides the
hidden states, the same for its bias-free head), HyperCLOVAX multiplies them by
``logits_scaling``, Cohere by ``logit_scale``. :func:`check_lm_logits` refuses, once per model,
any other transform: it compares :func:`lm_logits` with the model's own forward on the same
hidden states.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPast

from .modeling import at_least_fp32, hidden_width

DIVIDED_BY_LOGITS_SCALING = {"granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoehybrid",
                             "granitemoeshared", "minicpm3"}
MULTIPLIED_BY = {"cohere": "logit_scale", "cohere2": "logit_scale", "cohere2_moe": "logit_scale",
                 "cohere_compass": "logit_scale", "hyperclovax": "logits_scaling"}
CHECK_LOGIT = 50.0  # the check's largest logit: softcaps (Gemma 2: 30) and scales are far from identity there
_checked: weakref.WeakSet = weakref.WeakSet()


def lm_logits(hf, hidden: torch.Tensor) -> torch.Tensor:
    """Logits (fp32 at least: ``modeling.at_least_fp32``) of final hidden states ``hidden``."""
    config = hf.config
    logits = at_least_fp32(hf.get_output_embeddings()(hidden))
    if config.model_type in DIVIDED_BY_LOGITS_SCALING:
        logits = logits / config.logits_scaling
    if config.model_type in MULTIPLIED_BY:
        logits = logits * getattr(config, MULTIPLIED_BY[config.model_type])
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def check_lm_logits(hf) -> None:
    """Raise unless :func:`lm_logits` gives the log-softmax of the model's own forward (once per
    model). The forward runs on fixed hidden states (its decoder replaced for the call, so no
    attention kernel runs): a few positions, logits up to +-``CHECK_LOGIT``."""
    if hf in _checked:
        return
    weight = hf.get_output_embeddings().weight
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 4, hidden_width(hf), generator=g).to(weight.device, weight.dtype)
    with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
        hidden = hidden * (CHECK_LOGIT / hf.get_output_embeddings()(hidden).float().abs().max().clamp(min=1e-3))
        ours = F.log_softmax(lm_logits(hf, hidden[0]), dim=-1)
        theirs = F.log_softmax(at_least_fp32(_forward_on(hf, hidden).logits[0]), dim=-1)
    # the forward may transform in the model's dtype, we in fp32: a few roundings of the largest logit
    tol = 6 * torch.finfo(weight.dtype).eps * (1 + CHECK_LOGIT)
    diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else float("inf")
    if not diff <= tol:
        raise ValueError(f"{hf.config.model_type} ({type(hf).__name__}): its forward transforms the LM head's "
                         f"logits in a way drdo does not reproduce (log-probs differ by up to {diff:.3g}, tolerance "
                         f"{tol:.3g}), so its response log-probs would be wrong; supported: softcapping "
                         "(final_logit_softcapping) and the logit scales of Granite, MiniCPM3, HyperCLOVAX, Cohere")
    _checked.add(hf)


class _DecoderOutput(BaseModelOutputWithPast):
    """``last_hidden_state``; anything else a forward reads of its decoder's output (a mixture of
    experts' router logits...) is None."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def _forward_on(hf, hidden: torch.Tensor):
    """The model's forward with its decoder (``get_decoder()``, what ``packing.final_hidden`` reads)
    returning ``hidden``."""
    decoder = hf.get_decoder()
    own = decoder.__dict__.get("forward")  # an instance attribute (accelerate hooks) or the class's
    decoder.forward = lambda *args, **kwargs: _DecoderOutput(last_hidden_state=hidden)
    try:
        ids = torch.zeros(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return hf(input_ids=ids, use_cache=False)
    finally:
        if own is None:
            del decoder.forward
        else:
            decoder.forward = own
