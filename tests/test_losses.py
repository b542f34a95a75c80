"""Loss identities: KD's T^2 scaling, DKD's decomposition, the KLDiv 'mean' pitfall."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdengine.losses.logits import dkd_loss, dkd_per_sample, dkd_terms, kd_loss, kd_loss_unscaled


def _logits(seed=0, n=32, k=10, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g, dtype=torch.float64) * scale,
            torch.randn(n, k, generator=g, dtype=torch.float64) * scale,
            torch.randint(0, k, (n,), generator=g))


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
def test_kd_loss_equals_t2_kl_by_hand(T):
    s, t, _ = _logits()
    p_t = torch.softmax(t / T, -1)
    p_s = torch.softmax(s / T, -1)
    by_hand = T * T * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert torch.allclose(kd_loss(s, t, T), by_hand, atol=1e-10)
    # and it is KLDivLoss with batchmean, not with 'mean' (which also divides by the class count)
    ref = F.kl_div(F.log_softmax(s / T, -1), p_t, reduction="batchmean") * T * T
    assert torch.allclose(kd_loss(s, t, T), ref, atol=1e-10)
    wrong = F.kl_div(F.log_softmax(s / T, -1), p_t, reduction="mean") * T * T
    assert not torch.allclose(kd_loss(s, t, T), wrong)


def test_kd_loss_is_zero_for_identical_logits():
    s, _, _ = _logits()
    assert kd_loss(s, s.clone(), 4.0).abs().item() < 1e-12


def test_kd_gradient_scale_is_independent_of_T_with_t_squared():
    """For large T the soft gradient ~ (z_s - z_t) / (N T^2); T^2 restores it (Hinton 2015 s.2.1)."""
    s, t, _ = _logits(scale=0.5)
    # zero-mean logits: the high-temperature limit of the gradient is (z_s - z_t) / (N K T^2)
    s, t = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    norms_scaled, norms_unscaled = [], []
    for T in (10.0, 20.0, 40.0):
        x = s.clone().requires_grad_(True)
        kd_loss(x, t, T).backward()
        norms_scaled.append(x.grad.norm().item())
        y = s.clone().requires_grad_(True)
        kd_loss_unscaled(y, t, T).backward()
        norms_unscaled.append(y.grad.norm().item())
    # with T^2: about constant; without: falls like 1/T^2 (x4 per doubling of T)
    assert max(norms_scaled) / min(norms_scaled) < 1.05
    assert norms_unscaled[0] / norms_unscaled[1] == pytest.approx(4.0, rel=0.05)
    assert norms_unscaled[1] / norms_unscaled[2] == pytest.approx(4.0, rel=0.05)
    # and the limit itself: grad = (z_s - z_t) / (N K) with the T^2 factor
    n, k = s.shape
    x = s.clone().requires_grad_(True)
    kd_loss(x, t, 1000.0).backward()
    assert torch.allclose(x.grad, (s - t) / (n * k), rtol=1e-2, atol=1e-7)


def test_kd_gradient_does_not_flow_into_teacher():
    s, t, _ = _logits()
    t = t.clone().requires_grad_(True)
    kd_loss(s.requires_grad_(True), t, 2.0).backward()
    assert t.grad is None


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dkd_identity_kd_equals_tckd_plus_weighted_nckd(T, seed):
    s, t, y = _logits(seed)
    per = dkd_per_sample(s, t, y, T)
    kl = kd_loss_unscaled  # batch mean; check per sample too
    p_t = torch.softmax(t / T, -1)
    kl_per = (p_t * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1)
    rebuilt = per["tckd"] + (1 - per["p_t"]) * per["nckd"]
    assert torch.allclose(kl_per, rebuilt, atol=1e-5)
    assert torch.allclose(kl(s, t, T), rebuilt.mean(), atol=1e-5)


def test_dkd_identity_in_float32():
    s, t, y = (v.float() if v.is_floating_point() else v for v in _logits(5))
    per = dkd_per_sample(s, t, y, 4.0)
    kl_per = (torch.softmax(t / 4, -1) * (F.log_softmax(t / 4, -1) - F.log_softmax(s / 4, -1))).sum(-1)
    assert torch.allclose(kl_per, per["tckd"] + (1 - per["p_t"]) * per["nckd"], atol=1e-5)


def test_dkd_loss_is_weighted_sum_of_terms_with_t2():
    s, t, y = _logits(3)
    T, a, b = 4.0, 1.0, 8.0
    terms = dkd_terms(s, t, y, T)
    per = dkd_per_sample(s, t, y, T)
    assert torch.allclose(terms["tckd"], per["tckd"].mean() * T * T)
    assert torch.allclose(terms["nckd"], per["nckd"].mean() * T * T)
    assert torch.allclose(dkd_loss(s, t, y, a, b, T), a * terms["tckd"] + b * terms["nckd"])
    # alpha = 1 and beta = 1 - p_t per sample would give back KD exactly
    kd = kd_loss(s, t, T)
    assert torch.allclose(kd, (per["tckd"] + (1 - per["p_t"]) * per["nckd"]).mean() * T * T,
                          atol=1e-6)


def test_dkd_terms_are_nonnegative_and_zero_for_equal_logits():
    s, t, y = _logits(4)
    d = dkd_terms(s, t, y, 2.0)
    assert d["tckd"] >= 0 and d["nckd"] >= 0
    z = dkd_terms(t, t.clone(), y, 2.0)
    assert z["tckd"].abs() < 1e-6 and z["nckd"].abs() < 1e-6
