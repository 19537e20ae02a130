"""Training forwards of the gated MLP and the RMS norm that keep fewer activations for backward.

A decoder layer's gated MLP, ``down(silu(gate(x)) * up(x))``, leaves four tensors of the
intermediate width for autograd (gate, up, silu(gate) and their product); :class:`GatedMLP`
keeps gate and up and recomputes the two elementwise ones in backward, which costs no matmul,
and otherwise runs autograd's own backward operations (the same gradients in float32). An RMS
norm leaves its input and its normalised output; :class:`RecomputedNorm` keeps the input and runs
the norm's own forward again in backward (the same operations; only the order in which its
input's gradients add up changes, which is rounding). On SmolLM2-135M (30 layers of width 576
and 1,536) this is about 20% of a training step's activation memory (docs/performance.md).

:func:`lean_training` swaps these forwards in on a model's instances for the time it trains. An
MLP class is swapped only if the lean forward reproduces its own: checked once per class on a
small random input, outputs and gradients (an MLP with another activation, biases or a fused
``gate_up_proj`` keeps its own forward).
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger("drdo.train")
# narrower models keep their own forwards: their activations are small, and the recomputed elementwise
# work is a larger share of a step (the 128-wide default model: 3-15% slower steps, no memory saved)
MIN_WIDTH = 512


class _AutocastState:
    """The forward's autocast, re-entered in backward (as ``torch.amp.custom_bwd`` does, for any device)."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.enabled = torch.is_autocast_enabled(device_type)
        self.dtype = torch.get_autocast_dtype(device_type)

    def __call__(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


class GatedMLP(torch.autograd.Function):
    """``down(silu(x @ Wg^T) * (x @ Wu^T))`` (no biases), keeping x, gate and up for backward."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down):
        gate, up = F.linear(x, w_gate), F.linear(x, w_up)
        out = F.linear(F.silu(gate) * up, w_down)
        ctx.save_for_backward(x, gate, up, w_gate, w_up, w_down)
        ctx.autocast = _AutocastState(x.device.type)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, gate, up, w_gate, w_up, w_down = ctx.saved_tensors
        with ctx.autocast():
            act = F.silu(gate)
            hidden = act * up  # recomputed: the two tensors autograd would have kept
            g2, h2 = grad.reshape(-1, grad.shape[-1]), hidden.reshape(-1, hidden.shape[-1])
            d_down = g2.t().mm(h2)
            d_hidden = F.linear(grad, w_down.t())
            d_up = d_hidden * act
            d_gate = torch.ops.aten.silu_backward(d_hidden * up, gate)
            x2 = x.reshape(-1, x.shape[-1]).to(d_gate.dtype)
            d_w_gate = d_gate.reshape(-1, d_gate.shape[-1]).t().mm(x2)
            d_w_up = d_up.reshape(-1, d_up.shape[-1]).t().mm(x2)
            # x reaches the two projections through two autocast casts: their gradients add in x's dtype
            d_x = F.linear(d_gate, w_gate.t()).to(x.dtype) + F.linear(d_up, w_up.t()).to(x.dtype)
        return d_x, d_w_gate, d_w_up, d_down


class RecomputedNorm(torch.autograd.Function):
    """A norm module's own forward, keeping only its input for backward: backward runs the forward
    again (elementwise, cheap) and takes autograd's gradients of it, so they are exactly autograd's."""

    @staticmethod
    def forward(ctx, x, module, *params):
        ctx.save_for_backward(x)
        ctx.module, ctx.autocast = module, _AutocastState(x.device.type)
        return type(module).forward(module, x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        x = x.detach().requires_grad_(True)
        params = list(ctx.module.parameters(recurse=False))
        with torch.enable_grad(), ctx.autocast():
            out = type(ctx.module).forward(ctx.module, x)
        grads = torch.autograd.grad(out, [x, *params], grad)
        return grads[0], None, *grads[1:]


def _is_silu(module) -> bool:
    return isinstance(module, nn.SiLU) or type(module).__name__ == "SiLUActivation"


def _lean_mlp(module):
    if not isinstance(getattr(module, "gate_proj", None), nn.Linear) or module.gate_proj.in_features < MIN_WIDTH:
        return None
    if not all(isinstance(getattr(module, n, None), nn.Linear) and getattr(module, n).bias is None
               for n in ("gate_proj", "up_proj", "down_proj")) or not _is_silu(getattr(module, "act_fn", None)):
        return None
    return lambda x: GatedMLP.apply(x, module.gate_proj.weight, module.up_proj.weight, module.down_proj.weight)


def _lean_norm(module):
    if "RMSNorm" not in type(module).__name__ or list(module.children()) or not isinstance(
            getattr(module, "weight", None), nn.Parameter) or module.weight.shape[-1] < MIN_WIDTH:
        return None
    return lambda x: RecomputedNorm.apply(x, module, *module.parameters(recurse=False))


def _same(module, lean, width: int) -> bool:
    """Whether ``lean`` gives the module's own outputs and gradients (float32 copies, random input)."""
    gen = torch.Generator().manual_seed(0)
    params = list(module.parameters())
    x = torch.randn(2, 3, width, generator=gen).to(params[0].device)
    results = []
    for fn in (module.forward, lean):
        xi = x.clone().requires_grad_(True)
        with torch.enable_grad():
            out = fn(xi)
            grads = torch.autograd.grad(out, [xi, *params], torch.ones_like(out), allow_unused=True)
        results.append([out.detach(), *[g for g in grads if g is not None]])
    (a, *ga), (b, *gb) = results
    close = lambda u, v: u.shape == v.shape and torch.allclose(u.float(), v.float(), rtol=1e-4, atol=1e-5)  # noqa: E731
    return close(a, b) and len(ga) == len(gb) and all(close(u, v) for u, v in zip(ga, gb))


@contextlib.contextmanager
def lean_training(model: nn.Module):
    """Within the block, the model's gated MLPs (of the classes that pass the check) and RMS norms
    run the lean forwards above; their own forwards come back afterwards. Yields how many."""
    mlp_ok: dict[type, bool] = {}
    swapped = []
    for module in model.modules():
        if lean := _lean_mlp(module):
            cls = type(module)
            if cls not in mlp_ok:  # trained weights are fp32 (the precision contract in drdo.trainer)
                mlp_ok[cls] = all(p.dtype == torch.float32 for p in module.parameters()) and _same(
                    module, lean, module.gate_proj.in_features)
                if not mlp_ok[cls]:
                    log.info("%s keeps its own forward (the lean one does not reproduce it)", cls.__name__)
            if not mlp_ok[cls]:
                continue
        elif not (lean := _lean_norm(module)):
            continue
        module.forward = lean
        swapped.append((module, lean))
    try:
        yield len(swapped)
    finally:
        for module, lean in swapped:
            if module.__dict__.get("forward") is lean:  # not replaced meanwhile (hub kernels on train())
                del module.forward  # the class's own forward again
