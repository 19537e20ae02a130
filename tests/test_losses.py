"""Losses against hand-computed values, the standard formulas, Appendix A.5 (Eq. 30) and autograd."""

import math
from decimal import Decimal, localcontext

import pytest
import torch

from drdo import objectives
from drdo.losses import (bradley_terry_loss, cdpo_loss, dpo_loss, drdo_loss, edpo_loss, ipo_loss, log1mexp,
                         oracle_loss, rdpo_loss)

t = lambda *xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731


# Independent references (plain Python floats / decimals, none of the code under test):
def softplus64(x: float) -> float:
    """log(1 + e^x) = -log sigmoid(-x), without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def log1mexp_decimal(z: float) -> float:
    """log(1 - e^z) in 60-digit decimal arithmetic on the exact value of the float z."""
    with localcontext() as ctx:
        ctx.prec = 60
        return float((1 - Decimal(z).exp()).ln())


def drdo_reference(z_w, z_l, rhat_w, rhat_l, rstar_w, rstar_l, alpha, gamma):
    """Eq. 6 pair by pair in float64, averaged over the batch."""
    total = 0.0
    for zw, zl, hw, hl, sw, sl in zip(z_w, z_l, rhat_w, rhat_l, rstar_w, rstar_l):
        one_minus_p = 1 / (1 + math.exp(zw - zl))  # 1 - sigmoid(z_w - z_l)
        total += ((sw - sl) - (hw - hl)) ** 2 - alpha * one_minus_p ** gamma * (zw - log1mexp_decimal(zl))
    return total / len(z_w)


def test_bradley_terry_hand_value():
    loss, terms = bradley_terry_loss(t(1.0), t(0.0))
    assert loss.item() == pytest.approx(0.3132616875, abs=1e-9)  # log(1 + e^-1)
    assert terms["reward_acc"].item() == 1.0


def test_oracle_loss_hand_value():
    # (1 - 0.01) * log(1 + e^-1) + 0.01 * 2.0
    loss, _ = oracle_loss(t(1.0), t(0.0), t(2.0), alpha=0.01)
    assert loss.item() == pytest.approx(0.99 * 0.3132616875 + 0.02, abs=1e-9)
    # alpha = 0 is Eq. 2 exactly
    assert oracle_loss(t(0.3, -1.0), t(0.1, 2.0), t(5.0, 7.0), 0.0)[0].item() == pytest.approx(
        bradley_terry_loss(t(0.3, -1.0), t(0.1, 2.0))[0].item())


def test_oracle_loss_averages_bt_and_nll_over_the_batch():
    # BT: (log(1 + e^-1) + log 2) / 2 = (0.3132616875 + 0.6931471806) / 2 = 0.5032044340
    # NLL (Eq. 5): (2 + 4) / 2 = 3, a mean (a sum would be 6)
    loss, terms = oracle_loss(t(1.0, 0.0), t(0.0, 0.0), t(2.0, 4.0), alpha=0.1)
    assert loss.item() == pytest.approx(0.9 * 0.5032044340 + 0.1 * 3.0, abs=1e-9)
    assert terms["nll_chosen"].item() == pytest.approx(3.0)


def test_dpo_hand_value():
    # margin = (-1 + 1.5) - (-2 + 1.5) = 1; loss = log(1 + e^-0.1)
    loss, terms = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1)
    assert loss.item() == pytest.approx(0.6443966600, abs=1e-9)
    assert terms["implicit_acc"].item() == 1.0


def test_dpo_equals_standard_formula():
    g = torch.Generator().manual_seed(0)
    pw, pl, rw, rl = (-10 * torch.rand(64, generator=g, dtype=torch.float64) for _ in range(4))
    beta = 0.5
    # Rafailov et al. (2023): -log sigmoid(beta * (log pi_w/pi_l - log ref_w/ref_l))
    expected = -torch.log(torch.sigmoid(beta * ((pw - pl) - (rw - rl)))).mean()
    assert dpo_loss(pw, pl, rw, rl, beta)[0].item() == pytest.approx(expected.item(), rel=1e-12)


def test_edpo_min_and_mean_over_members():
    # one pair, zero implicit margin, members' margins 1 and 3 -> L_k = 1, 9
    r1, r2 = torch.tensor([[1.0, 3.0]]), torch.zeros(1, 2)
    z = torch.zeros(1)
    assert edpo_loss(z, z, z, z, r1, r2, beta=0.1)[0].item() == pytest.approx(1.0)
    assert edpo_loss(z, z, z, z, r1, r2, beta=0.1, reduction="mean")[0].item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="reduction"):
        edpo_loss(z, z, z, z, r1, r2, beta=0.1, reduction="max")


def test_edpo_hand_value_with_implicit_margin():
    # implicit = 0.5 * ((-1 - -2) - (-3 - -3)) = 0.5; member margins 2 and 0.5
    loss, _ = edpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-3.0), t([2.0, 0.5]), t([0.0, 0.0]),
                        beta=0.5, reduction="mean")
    assert loss.item() == pytest.approx(((2 - 0.5) ** 2 + 0.0) / 2)


def test_edpo_min_is_over_members_of_the_batch_mean():
    # two pairs, beta 0.5: implicit = 0.5 * [(-1 + 2) - (-3 + 3), (-2 + 2) - (-1 + 2)] = [0.5, -0.5]
    # member 0: r_1 - r_2 = [2.5, -0.5] -> residuals [2, 0]   -> L_0 = (4 + 0) / 2    = 2
    # member 1: r_1 - r_2 = [1.5,  1.0] -> residuals [1, 1.5] -> L_1 = (1 + 2.25) / 2 = 1.625
    # min_k L_k = 1.625; the mean over pairs of a per-pair min would be (min(4, 1) + min(0, 2.25)) / 2 = 0.5
    r_1, r_2 = t([3.0, 2.0], [0.0, 1.5]), t([0.5, 0.5], [0.5, 0.5])
    args = (t(-1.0, -2.0), t(-3.0, -1.0), t(-2.0, -2.0), t(-3.0, -2.0), r_1, r_2)
    loss, terms = edpo_loss(*args, beta=0.5)
    assert loss.item() == pytest.approx(1.625, abs=1e-12)
    assert terms["implicit_margin"].item() == pytest.approx(0.0, abs=1e-12)
    assert edpo_loss(*args, beta=0.5, reduction="mean")[0].item() == pytest.approx((2 + 1.625) / 2, abs=1e-12)


def test_drdo_hand_value():
    z_w, z_l, alpha, gamma = -1.0, -2.0, 0.1, 2.0
    p_w = 1 / (1 + math.exp(-(z_w - z_l)))
    expected = (1.0 - 0.5) ** 2 - alpha * (1 - p_w) ** gamma * (z_w - math.log(1 - math.exp(z_l)))
    assert expected == pytest.approx(0.2561812, abs=1e-6)
    loss, terms = drdo_loss(t(z_w), t(z_l), t(0.5), t(0.0), t(1.0), t(0.0), alpha, gamma)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert terms["distill"].item() == pytest.approx(0.25)


def test_drdo_float32_rejected_log_prob_near_zero():
    """z_l -> 0 (a rejected response of probability ~1): in float32 a naive log(1 - exp(z_l)) is
    log(0) = -inf at z_l = -1e-8 and off by ~0.013 at z_l = -1e-6 (exp rounds to a float32 next
    to 1); the loss must match Eq. 6 evaluated in high precision."""
    z_w = torch.tensor([-3.0, -20.0, -5.0], requires_grad=True)
    z_l = torch.tensor([-1e-8, -1e-6, -60.0], requires_grad=True)
    rhat_w, rhat_l, rstar_w, rstar_l = (torch.tensor(v) for v in ([0.5, 0.0, 1.0], [0.0, 0.0, 0.0],
                                                                    [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]))
    alpha, gamma = 0.1, 2.0
    loss, _ = drdo_loss(z_w, z_l, rhat_w, rhat_l, rstar_w, rstar_l, alpha, gamma)
    zw, zl = z_w.tolist(), z_l.tolist()  # the float32 inputs' exact values
    expected = drdo_reference(zw, zl, rhat_w.tolist(), rhat_l.tolist(), rstar_w.tolist(), rstar_l.tolist(),
                              alpha, gamma)
    # the first pair by hand: 1 - p_w = sigmoid(3) = 0.9525741, log(1 - e^-1e-8) = log(1e-8) = -18.4206807,
    # (1 - 0.5)^2 - 0.1 * 0.9525741^2 * (-3 + 18.4206807) = 0.25 - 0.1 * 0.9073975 * 15.4206807 = -1.1492687
    first = drdo_reference(zw[:1], zl[:1], [0.5], [0.0], [1.0], [0.0], alpha, gamma)
    assert first == pytest.approx(-1.1492687, abs=1e-6)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected, rel=1e-5)
    # z_l's gradient at -1e-8 is Eq. 30's -alpha (1 - p_w)^gamma pi_l / (1 - pi_l) (~1e8) less the focal term
    g_w, g_l = torch.autograd.grad(loss, (z_w, z_l))
    assert torch.isfinite(g_w).all() and torch.isfinite(g_l).all()
    p = 1 / (1 + math.exp(-(zw[0] - zl[0])))
    focal_grad = alpha * gamma * (1 - p) ** gamma * p * (zw[0] - log1mexp_decimal(zl[0]))
    eq30_l = -focal_grad - alpha * (1 - p) ** gamma * math.exp(zl[0]) / -math.expm1(zl[0])
    assert g_l[0].item() == pytest.approx(eq30_l / 3, rel=1e-4)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("z_w,z_l", [(-1.0, -2.0), (-30.0, -25.0), (-0.2, -0.05), (-400.0, -1e4)])
def test_drdo_focal_gradient_matches_eq30(gamma, z_w, z_l):
    alpha = 0.1
    zw = torch.tensor(z_w, dtype=torch.float64, requires_grad=True)
    zl = torch.tensor(z_l, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros((), dtype=torch.float64)
    # rewards equal -> only the focal term carries gradient w.r.t. z
    loss, _ = drdo_loss(zw, zl, zero, zero, zero, zero, alpha, gamma)
    g_w, g_l = torch.autograd.grad(loss, (zw, zl))

    p = 1 / (1 + math.exp(-(z_w - z_l)))
    pi_l = math.exp(z_l)
    log_odds = z_w - math.log1p(-pi_l) if z_l < -math.log(2) else z_w - math.log(-math.expm1(z_l))
    focal_grad = alpha * gamma * (1 - p) ** gamma * p * log_odds  # (1-p)^(gamma-1) * (1-p), Eq. 30
    # Eq. 30 with grad z_w = (1, 0), grad z_l = (0, 1); grad pi_l / (1 - pi_l) = pi_l/(1 - pi_l) dz_l
    eq30_w = focal_grad - alpha * (1 - p) ** gamma
    eq30_l = -focal_grad - alpha * (1 - p) ** gamma * pi_l / (1 - pi_l)
    assert g_w.item() == pytest.approx(eq30_w, rel=1e-9, abs=1e-300)
    assert g_l.item() == pytest.approx(eq30_l, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.9])
def test_drdo_fractional_gamma_keeps_gradients_finite_when_p_w_saturates(gamma):
    """The schema allows 0 < gamma < 1; once 1 - p_w underflows to 0 (a confident pair),
    pow's derivative gamma * (1 - p_w)^(gamma - 1) is inf and the gradient NaN."""
    zw = torch.tensor([-5.0, -20.0], requires_grad=True)  # float32: 1 - p_w = sigmoid(-200) == 0
    zl = torch.tensor([-205.0, -21.0], requires_grad=True)
    zero = torch.zeros(2)
    loss, terms = drdo_loss(zw, zl, zero, zero, zero, zero, 0.1, gamma)
    g_w, g_l = torch.autograd.grad(loss, (zw, zl))
    assert torch.isfinite(loss) and torch.isfinite(g_w).all() and torch.isfinite(g_l).all()
    # the saturated pair has (almost) no focal weight left; the other one is Eq. 30's
    assert abs(g_w[0].item()) < 1e-20 and abs(g_l[0].item()) < 1e-20
    p = 1 / (1 + math.exp(-1.0))
    log_odds = -20.0 - math.log1p(-math.exp(-21.0))
    expected_w = (0.1 * gamma * (1 - p) ** gamma * p * log_odds - 0.1 * (1 - p) ** gamma) / 2
    assert g_w[1].item() == pytest.approx(expected_w, rel=1e-4)


def test_drdo_gradient_reaches_student_reward_only_through_distillation():
    rhat_w = torch.tensor(0.2, requires_grad=True)
    loss, _ = drdo_loss(t(-3.0).float(), t(-4.0).float(), rhat_w, torch.tensor(0.0),
                        torch.tensor(1.0), torch.tensor(0.0), 0.1, 2.0)
    (g,) = torch.autograd.grad(loss, rhat_w)
    assert g.item() == pytest.approx(-2 * (1.0 - 0.2), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1mexp_stable_over_whole_range(dtype):
    z64 = -torch.logspace(-8, 4, 200, dtype=torch.float64)  # -1e-8 ... -1e4
    z = z64.to(dtype).requires_grad_(True)
    # 60-digit decimal log(1 - e^z) on each (rounded) input: independent of log1mexp's two branches
    reference = torch.tensor([log1mexp_decimal(v) for v in z.tolist()], dtype=torch.float64)
    out = log1mexp(z)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-30)
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
    # the naive formula fails at both ends, which is why log1mexp exists
    naive = torch.log(1 - torch.exp(torch.tensor([-1e-8], dtype=torch.float32)))
    assert not torch.isfinite(naive).all()
    assert log1mexp(torch.tensor([-1e4], dtype=dtype)).item() == 0.0


# --------------------------------------------------------------------------- noise-robust baselines
# The DPO hand case: margin h = 1, beta 0.1: log(1 + e^-0.1) = 0.6443966600, log(1 + e^0.1) = 0.7443966600.
L_POS, L_NEG = 0.6443966600, 0.7443966600


def _random_logps(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(-10 * torch.rand(n, generator=g, dtype=torch.float64) for _ in range(4))


def test_cdpo_hand_value_and_soft_label_cross_entropy():
    loss, terms = cdpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, epsilon=0.1)
    assert loss.item() == pytest.approx(0.9 * L_POS + 0.1 * L_NEG, abs=1e-9)
    assert terms["implicit_acc"].item() == 1.0
    # Mitchell (2023): cDPO is the cross-entropy of sigmoid(beta h) against the soft label 1 - eps
    pw, pl, rw, rl = _random_logps()
    z = 0.5 * ((pw - rw) - (pl - rl))
    soft = torch.nn.functional.binary_cross_entropy_with_logits(z, torch.full_like(z, 0.8))
    assert cdpo_loss(pw, pl, rw, rl, 0.5, 0.2)[0].item() == pytest.approx(soft.item(), rel=1e-12)
    assert cdpo_loss(pw, pl, rw, rl, 0.5, 0.0)[0].item() == pytest.approx(dpo_loss(pw, pl, rw, rl, 0.5)[0].item())


def test_rdpo_hand_value_and_unbiased_for_flipped_labels():
    loss, _ = rdpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, epsilon=0.1)
    assert loss.item() == pytest.approx((0.9 * L_POS - 0.1 * L_NEG) / 0.8, abs=1e-9)
    # Chowdhury et al. (2024): averaged over a label flipped with probability eps (the pair's
    # sides swapped), the loss is DPO's on the clean label, pair by pair
    pw, pl, rw, rl = _random_logps(seed=1)
    for eps in (0.1, 0.3, 0.45):
        for i in range(8):
            kept = rdpo_loss(pw[i:i + 1], pl[i:i + 1], rw[i:i + 1], rl[i:i + 1], 0.5, eps)[0]
            flipped = rdpo_loss(pl[i:i + 1], pw[i:i + 1], rl[i:i + 1], rw[i:i + 1], 0.5, eps)[0]
            clean = dpo_loss(pw[i:i + 1], pl[i:i + 1], rw[i:i + 1], rl[i:i + 1], 0.5)[0]
            assert ((1 - eps) * kept + eps * flipped).item() == pytest.approx(clean.item(), rel=1e-10)
    assert rdpo_loss(pw, pl, rw, rl, 0.5, 0.0)[0].item() == pytest.approx(dpo_loss(pw, pl, rw, rl, 0.5)[0].item())


def test_rdpo_gradient_matches_its_formula():
    pw, pl, rw, rl = _random_logps(n=16, seed=2)
    pw.requires_grad_(True)
    beta, eps = 0.5, 0.2
    rdpo_loss(pw, pl, rw, rl, beta, eps)[0].backward()
    z = beta * ((pw - rw) - (pl - rl)).detach()
    # d/dz [(1 - e) l(z) - e l(-z)] / (1 - 2e) = [-(1 - e) sigmoid(-z) - e sigmoid(z)] / (1 - 2e)
    expected = beta * (-(1 - eps) * torch.sigmoid(-z) - eps * torch.sigmoid(z)) / (1 - 2 * eps) / len(z)
    assert torch.allclose(pw.grad, expected, rtol=1e-10, atol=0)


def test_ipo_hand_value_and_gradient():
    # h = (-1 + 1.5) - (-2 + 1.5) = 1; (1 - 1 / (2 * 0.1))^2 = 16; at tau = 0.5 the target is 1
    assert ipo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), tau=0.1)[0].item() == pytest.approx(16.0)
    assert ipo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), tau=0.5)[0].item() == pytest.approx(0.0)
    pw, pl, rw, rl = _random_logps(n=16, seed=3)
    pw.requires_grad_(True)
    ipo_loss(pw, pl, rw, rl, 0.25)[0].backward()
    h = ((pw - rw) - (pl - rl)).detach()
    assert torch.allclose(pw.grad, 2 * (h - 2.0) / len(h), rtol=1e-12)


def test_ipo_objective_aggregates_policy_and_reference_alike():
    out = {"logp_w": t(-6.0), "logp_l": t(-12.0), "ntok_w": t(3.0), "ntok_l": t(4.0)}
    tables = {"ref_logp_chosen": t(-9.0), "ref_logp_rejected": t(-8.0)}
    mean = objectives.build("ipo", {"tau": 0.5, "logp_agg": "mean"})
    # per-token: (-6 + 9) / 3 - (-12 + 8) / 4 = 1 + 1 = 2; (2 - 1)^2 = 1
    assert mean.loss(out, tables)[0].item() == pytest.approx(1.0) and mean.columns == ("ref_logp_chosen", "ref_logp_rejected")
    summed = objectives.build("ipo", {"tau": 0.5, "logp_agg": "sum"})
    assert summed.loss(out, tables)[0].item() == pytest.approx((3 + 4 - 1) ** 2)
    with pytest.raises(ValueError, match="logp_agg"):
        objectives.build("ipo", {"tau": 0.5, "logp_agg": "max"})
    with pytest.raises(ValueError, match="align.rdpo.epsilon"):
        objectives.build("rdpo", {"beta": 0.1, "epsilon": 0.5})


# --------------------------------------------------------------------------- float32 at large margins
# In float32 sigmoid(-x) underflows to 0 for x > ~104, so a naive log(sigmoid(.)) is -inf; logsigmoid is not.
# Margins (policy, reference 0): [-900, 900, 1]; with beta 0.25 the scaled margins are z = [-225, 225, 0.25].
_PW, _PL = [-1000.0, -100.0, -1.0], [-100.0, -1000.0, -2.0]
_Z = [-225.0, 225.0, 0.25]


@pytest.mark.parametrize("name", ["dpo", "cdpo", "rdpo"])
def test_dpo_family_float32_large_margins(name):
    eps = 0.1
    f32 = lambda xs: torch.tensor(xs, dtype=torch.float32)  # noqa: E731
    args = (f32(_PW), f32(_PL), f32([0.0] * 3), f32([0.0] * 3), 0.25)
    # l(z) = -log sigmoid(z) = softplus64(-z); l(-225) = 225, l(225) = 1.9e-98, l(0.25) = 0.5759394
    per_pair = {"dpo": lambda z: softplus64(-z),
                "cdpo": lambda z: (1 - eps) * softplus64(-z) + eps * softplus64(z),
                "rdpo": lambda z: ((1 - eps) * softplus64(-z) - eps * softplus64(z)) / (1 - 2 * eps)}[name]
    expected = sum(per_pair(z) for z in _Z) / 3
    if name == "dpo":
        assert expected == pytest.approx((225.0 + 0.5759394) / 3, abs=1e-6)
        loss = dpo_loss(*args)[0]
    else:
        loss = {"cdpo": cdpo_loss, "rdpo": rdpo_loss}[name](*args, eps)[0]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_and_oracle_float32_large_margins():
    # r_w - r_l = [-150, 1, 80]: (150 + log(1 + e^-1) + log(1 + e^-80)) / 3 = (150 + 0.3132616875 + 1.8e-35) / 3
    r_w, r_l = torch.tensor([-150.0, 1.0, 40.0]), torch.tensor([0.0, 0.0, -40.0])
    expected = (150.0 + 0.3132616875) / 3
    loss = bradley_terry_loss(r_w, r_l)[0]
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected, rel=1e-6)
    loss = oracle_loss(r_w, r_l, torch.tensor([1.0, 2.0, 3.0]), alpha=0.5)[0]
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.5 * expected + 0.5 * 2.0, rel=1e-6)


# --------------------------------------------------------------------------- objectives: columns -> loss arguments
# Two pairs; the forward outputs and table columns are distinct on each side, so that reading a column for the
# wrong side (chosen/rejected, policy/reference, teacher, head/log-prob) changes the loss.
#   sum margins h = (logp_w - ref_chosen) - (logp_l - ref_rejected)
#                 = [(-6 + 9) - (-12 + 8), (-4 + 5) - (-3 + 2)] = [7, 2]
#   mean log-probs: logp_w / ntok_w = [-2, -1], logp_l / ntok_l = [-3, -3]
def _out(**extra):
    return {"logp_w": t(-6.0, -4.0), "logp_l": t(-12.0, -3.0), "ntok_w": t(3.0, 4.0), "ntok_l": t(4.0, 1.0), **extra}


_REF = {"ref_logp_chosen": t(-9.0, -5.0), "ref_logp_rejected": t(-8.0, -2.0)}


def test_dpo_cdpo_rdpo_objectives_hand_values():
    # beta 0.5: z = [3.5, 1]
    dpo = (softplus64(-3.5) + softplus64(-1.0)) / 2  # (0.0297505 + 0.3132617) / 2
    assert dpo == pytest.approx((0.0297505 + 0.3132617) / 2, abs=1e-7)
    obj = objectives.build("dpo", {"beta": 0.5})
    assert set(obj.columns) == {"ref_logp_chosen", "ref_logp_rejected"} and not obj.reward_head
    assert obj.loss(_out(), _REF)[0].item() == pytest.approx(dpo, abs=1e-12)
    eps = 0.2
    cdpo = sum((1 - eps) * softplus64(-z) + eps * softplus64(z) for z in (3.5, 1.0)) / 2
    rdpo = sum(((1 - eps) * softplus64(-z) - eps * softplus64(z)) / (1 - 2 * eps) for z in (3.5, 1.0)) / 2
    assert objectives.build("cdpo", {"beta": 0.5, "epsilon": eps}).loss(_out(), _REF)[0].item() == pytest.approx(
        cdpo, abs=1e-12)
    assert objectives.build("rdpo", {"beta": 0.5, "epsilon": eps}).loss(_out(), _REF)[0].item() == pytest.approx(
        rdpo, abs=1e-12)


def test_edpo_objective_reads_each_members_chosen_and_rejected_columns():
    # beta 0.5: implicit = [3.5, 1]
    # member 0: rm0_chosen - rm0_rejected = [5 - 0.5, 2.5 + 0.5] = [4.5, 3]  -> residuals [1, 2] -> L_0 = 2.5
    # member 1: rm1_chosen - rm1_rejected = [3 + 0.5, 1 + 3]     = [3.5, 4]  -> residuals [0, 3] -> L_1 = 4.5
    tables = {**_REF, "rm0_chosen": t(5.0, 2.5), "rm0_rejected": t(0.5, -0.5),
              "rm1_chosen": t(3.0, 1.0), "rm1_rejected": t(-0.5, -3.0)}
    obj = objectives.build("edpo", {"beta": 0.5, "ensemble_size": 2, "reduction": "min"})
    assert set(obj.columns) == set(tables)
    assert obj.loss(_out(), tables)[0].item() == pytest.approx(2.5, abs=1e-12)
    obj = objectives.build("edpo", {"beta": 0.5, "ensemble_size": 2, "reduction": "mean"})
    assert obj.loss(_out(), tables)[0].item() == pytest.approx(3.5, abs=1e-12)


def test_oracle_objective_nll_is_the_chosen_responses_token_mean():
    # BT on the head: r_w - r_l = [1, 0] -> (0.3132616875 + 0.6931471806) / 2 = 0.5032044340
    # NLL of the chosen response per token: [6 / 3, 4 / 4] = [2, 1] -> mean 1.5 (the rejected one's would be [3, 3])
    out = _out(r_w=t(1.0, -1.0), r_l=t(0.0, -1.0))
    obj = objectives.build("oracle", {"nll_weight": 0.1})
    assert obj.reward_head and obj.columns == ()
    assert obj.loss(out, {})[0].item() == pytest.approx(0.9 * 0.5032044340 + 0.1 * 1.5, abs=1e-9)
    assert objectives.build("rm", {}).loss(out, {})[0].item() == pytest.approx(0.5032044340, abs=1e-9)


@pytest.mark.parametrize("student_reward,logp_agg,teacher", [("head", "sum", "oracle"), ("head", "mean", "oracle"),
                                                              ("logprob", "sum", "oracle"),
                                                              ("logprob", "mean", "gold")])
def test_drdo_objective_maps_teacher_student_and_aggregation(student_reward, logp_agg, teacher):
    r_w, r_l = [0.5, -1.0], [0.0, 0.5]
    star_w, star_l = [2.0, 1.0], [1.0, 1.5]
    out = _out(r_w=t(*r_w), r_l=t(*r_l))
    tables = {f"{teacher}_chosen": t(*star_w), f"{teacher}_rejected": t(*star_l)}
    z_w, z_l = ([-6.0, -4.0], [-12.0, -3.0]) if logp_agg == "sum" else ([-2.0, -1.0], [-3.0, -3.0])
    rhat_w, rhat_l = (r_w, r_l) if student_reward == "head" else (z_w, z_l)
    alpha, gamma = 0.1, 2.0
    expected = drdo_reference(z_w, z_l, rhat_w, rhat_l, star_w, star_l, alpha, gamma)
    if (student_reward, logp_agg) == ("head", "sum"):
        # distillation: ((2 - 1) - 0.5)^2 = 0.25 and ((1 - 1.5) - (-1.5))^2 = 1
        # focal: 1 - p_w = sigmoid(z_l - z_w) = [sigmoid(-6), sigmoid(1)] = [0.0024726, 0.7310586];
        #   0.0024726^2 * (-6 - log(1 - e^-12)) = -3.6683e-5, 0.7310586^2 * (-4 - log(1 - e^-3)) = -2.1104928
        assert expected == pytest.approx((0.25 + 1.0 + 0.1 * (3.6683e-5 + 2.1104928)) / 2, abs=1e-7)
    obj = objectives.build("drdo", {"alpha": alpha, "gamma": gamma, "student_reward": student_reward,
                                    "logp_agg": logp_agg, "teacher": teacher})
    assert set(obj.columns) == set(tables) and obj.reward_head == (student_reward == "head")
    assert obj.loss(out, tables)[0].item() == pytest.approx(expected, abs=1e-12)
