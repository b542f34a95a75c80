"""The methods compute the formulas of their papers: Hinton KD's and DKD's terms and gradients
against the formulas written out here independently (float64), DKD's identity, stacked students'
terms against each student's alone, and the trainer's step against the same sum by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdengine.methods import Batch, TrainContext, get_method_class
from kdengine.run.stacked import stacked_params
from kdengine.run.trainer import train_step

K, D, B = 10, 8, 32


def _data(seed=0, labeled_share=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    t = torch.randn(B, K, generator=g, dtype=torch.float64) * 3
    labeled = torch.rand(B, generator=g) < labeled_share
    y = y.where(labeled, torch.full_like(y, -1))        # the trainer's unlabelled samples: y = -1
    return x, y, labeled, t


def _method(name, params, student, steps_per_epoch=1, epochs=1, teacher=None):
    """The method on ``student``; ``params``: its knobs as a dict, or a Params (stacked knobs)."""
    cls = get_method_class(name)
    ctx = TrainContext(steps_per_epoch=steps_per_epoch, epochs=epochs, n_classes=K,
                       input_shape=(D,), device=torch.device("cpu"))
    params = cls.Params(**params) if isinstance(params, dict) else params
    return cls(student, [teacher or nn.Identity()], params, ctx)


def _student(seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, K)).double()


# ---- the formulas, written out as the papers give them --------------------------------------------
def hinton_kd(s, t, T):
    """T^2 KL(softmax(t/T) || softmax(s/T)), summed over classes, mean over the batch."""
    p_t = torch.softmax(t / T, -1)
    return T * T * (p_t * (torch.log(p_t) - torch.log_softmax(s / T, -1))).sum(-1).mean()


def ce_labelled(s, y, labeled):
    """Cross-entropy averaged over the labelled samples (0 with none)."""
    return F.cross_entropy(s[labeled], y[labeled]) if labeled.any() else s.sum() * 0


def dkd_reference(s, t, target, T):
    """TCKD and NCKD as the authors' code (mdistiller) writes them: the binary KL of
    [p_target, 1 - p_target], and the KL of the non-target classes with the target masked out by
    subtracting 1000 from its logit; each times T^2, batch mean."""
    gt = F.one_hot(target, K).bool()
    p_s, p_t = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
    b_s = torch.stack([(p_s * gt).sum(-1), (p_s * ~gt).sum(-1)], -1)
    b_t = torch.stack([(p_t * gt).sum(-1), (p_t * ~gt).sum(-1)], -1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * T ** 2 / len(s)
    q_t = torch.softmax(t / T - 1000.0 * gt, -1)
    log_q_s = torch.log_softmax(s / T - 1000.0 * gt, -1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * T ** 2 / len(s)
    return tckd, nckd


def _grads(loss, model):
    return torch.autograd.grad(loss, list(model.parameters()))


# ---- Hinton KD ----------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 4.0, 10.0])
@pytest.mark.parametrize("t_squared", [True, False])
@pytest.mark.parametrize("labeled_share", [1.0, 0.6])
def test_hinton_terms_and_gradient_are_the_papers(T, t_squared, labeled_share):
    x, y, labeled, t = _data(labeled_share=labeled_share)
    student = _student()
    w_kd, w_ce = 0.7, 0.3
    m = _method("hinton", {"T": T, "soft_weight": w_kd, "hard_weight": w_ce, "t_squared": t_squared},
                student)
    terms = m.loss_terms(Batch(x, y, labeled, torch.arange(B), [t]), 0)
    s = student(x)
    kd = hinton_kd(s, t, T) / (1.0 if t_squared else T * T)
    ce = ce_labelled(s, y, labeled)
    assert set(terms) == {"kd", "ce"}
    torch.testing.assert_close(terms["kd"], kd, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(terms["ce"], ce, rtol=1e-12, atol=1e-14)
    # what the trainer backpropagates: the weighted sum, with the paper's gradient
    got = _grads(sum(m.weigh(terms).values()), student)
    want = _grads(w_kd * kd + w_ce * ce, student)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_hinton_without_labels_or_with_a_zero_hard_weight_has_no_ce_term():
    x, y, labeled, t = _data(labeled_share=0.0)
    batch = Batch(x, y, labeled, torch.arange(B), [t])
    m = _method("hinton", {}, _student())
    assert float(m.loss_terms(batch, 0)["ce"].detach()) == 0.0      # no labelled sample: CE is 0
    m.zero_label_terms()                                      # what the trainer does on such a set
    assert set(m.loss_terms(batch, 0)) == {"kd"}


def test_hinton_runs_the_teacher_when_no_logits_are_cached():
    x, y, labeled, _ = _data()
    teacher = _student(seed=7)
    m = _method("hinton", {}, _student(), teacher=teacher)
    live = m.loss_terms(Batch(x, y, labeled, torch.arange(B)), 0)
    with torch.no_grad():
        cached = m.loss_terms(Batch(x, y, labeled, torch.arange(B), [teacher(x)]), 0)
    torch.testing.assert_close(live["kd"], cached["kd"])


# ---- DKD ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_dkd_terms_and_gradient_are_the_authors(T, seed):
    x, y, labeled, t = _data(seed)
    student = _student(seed)
    p = {"alpha": 1.0, "beta": 8.0, "T": T, "ce_weight": 1.0, "warmup_epochs": 0.0}
    m = _method("dkd", p, student)
    terms = m.loss_terms(Batch(x, y, labeled, torch.arange(B), [t]), 0)
    s = student(x)
    tckd, nckd = dkd_reference(s, t, y, T)
    ce = F.cross_entropy(s, y)
    for k, want in (("tckd", tckd), ("nckd", nckd), ("ce", ce)):
        torch.testing.assert_close(terms[k], want, rtol=1e-9, atol=1e-12)
    got = _grads(sum(m.weigh(terms).values()), student)
    for a, b in zip(got, _grads(tckd + 8.0 * nckd + ce, student)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_dkd_decomposes_kd_tckd_plus_one_minus_p_target_times_nckd():
    from kdengine.losses import dkd_per_sample, kd_loss
    x, y, _, t = _data(3)
    s = _student()(x)
    for T in (1.0, 4.0):
        per = dkd_per_sample(s, t, y, T)
        rebuilt = (per["tckd"] + (1 - per["p_t"]) * per["nckd"]).mean() * T * T
        torch.testing.assert_close(kd_loss(s, t, T), rebuilt, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(kd_loss(s, t, T), hinton_kd(s, t, T), rtol=1e-12, atol=1e-14)


def test_dkd_reference_defaults_and_capped_linear_warmup():
    cls = get_method_class("dkd")
    p = cls.Params()
    assert (p.alpha, p.beta, p.T, p.ce_weight, p.warmup_epochs) == (1.0, 8.0, 4.0, 1.0, 20.0)
    x, y, labeled, t = _data()
    batch = Batch(x, y, labeled, torch.arange(B), [t])
    full = _method("dkd", {"warmup_epochs": 0.0}, _student()).loss_terms(batch, 0)
    # a 40-epoch run of 10 steps an epoch: 20 epochs would be half of it, the cap (25%) makes it 10
    m = _method("dkd", {}, _student(), steps_per_epoch=10, epochs=40)
    for step, share in ((0, 0.0), (25, 0.25), (50, 0.5), (100, 1.0), (300, 1.0)):
        terms = m.loss_terms(batch, step)
        for k in ("tckd", "nckd"):
            torch.testing.assert_close(terms[k], share * full[k])
        torch.testing.assert_close(terms["ce"], full["ce"])      # CE is not warmed up


def test_dkd_takes_the_teachers_top_class_as_the_target_of_an_unlabelled_sample():
    x, y, labeled, t = _data(labeled_share=0.5)
    student = _student()
    terms = _method("dkd", {"warmup_epochs": 0.0}, student).loss_terms(
        Batch(x, y, labeled, torch.arange(B), [t]), 0)
    tckd, nckd = dkd_reference(student(x), t, y.where(labeled, t.argmax(-1)), 4.0)
    torch.testing.assert_close(terms["tckd"], tckd, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(terms["nckd"], nckd, rtol=1e-9, atol=1e-12)


# ---- stacked students: the same code, one value per student ---------------------------------------
class _Fixed(nn.Module):
    """A "student" that returns the given logits (a stack's [S, B, C], or one student's [B, C])."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


@pytest.mark.parametrize("name,cells", [
    ("hinton", [{"T": 1.0, "soft_weight": 0.9, "hard_weight": 0.1},
                {"T": 4.0, "soft_weight": 0.5, "hard_weight": 0.0},
                {"T": 8.0, "soft_weight": 1.0, "hard_weight": 0.7}]),
    ("dkd", [{"T": 2.0, "alpha": 1.0, "beta": 8.0, "ce_weight": 1.0, "warmup_epochs": 0.0},
             {"T": 4.0, "alpha": 0.5, "beta": 2.0, "ce_weight": 0.3, "warmup_epochs": 0.0},
             {"T": 6.0, "alpha": 2.0, "beta": 0.0, "ce_weight": 0.0, "warmup_epochs": 0.0}])])
def test_stacked_students_terms_equal_each_students_alone(name, cells):
    from kdengine.core.config import RunConfig
    x, y, labeled, t = _data(labeled_share=0.7)
    batch = Batch(x, y, labeled, torch.arange(B), [t])
    s = torch.randn(len(cells), B, K, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cfgs = []
    for c in cells:
        cfg = RunConfig()
        cfg.method.name, cfg.method.params = name, dict(c)
        cfgs.append(cfg.validate())
    # the knobs as the vectorised backend passes them: [S, 1, 1] tensors for T and the weights
    knobs = stacked_params(get_method_class(name), cfgs, torch.device("cpu"))
    stacked = _method(name, knobs, _Fixed(s))
    raw = stacked.loss_terms(batch, 0)
    weighted = stacked.weigh(raw)
    for i, c in enumerate(cells):
        alone = _method(name, c, _Fixed(s[i]))
        want = alone.loss_terms(batch, 0)
        assert all(v.shape == (len(cells),) for v in raw.values())
        for k, v in want.items():
            torch.testing.assert_close(raw[k][i], v, rtol=1e-12, atol=1e-14)
        for k in set(raw) - set(want):          # a term a student leaves out weighs 0 for it
            assert float(weighted[k][i]) == 0.0


# ---- the trainer's step ---------------------------------------------------------------------------
def test_train_step_descends_the_weighted_sum_of_the_terms():
    x, y, labeled, t = _data(labeled_share=0.8)
    student, twin = _student(), _student()
    m = _method("hinton", {"T": 3.0, "soft_weight": 0.6, "hard_weight": 0.4}, student)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    terms = train_step(m, Batch(x, y, labeled, torch.arange(B), [t]), 0, opt, None)
    s = twin(x)
    loss = 0.6 * hinton_kd(s, t, 3.0) + 0.4 * ce_labelled(s, y, labeled)
    torch.testing.assert_close(terms["kd"], hinton_kd(s, t, 3.0).detach())
    for p, q, g in zip(student.parameters(), twin.parameters(), _grads(loss, twin)):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * g, rtol=1e-10, atol=1e-12)


def test_terms_under_bf16_autocast_are_float32_and_the_gradient_has_the_weights_dtype():
    x, y, labeled, t = (v.float() if v.is_floating_point() else v for v in _data())
    for name in ("hinton", "dkd"):
        torch.manual_seed(0)
        student = nn.Linear(D, K)
        m = _method(name, {"warmup_epochs": 0.0} if name == "dkd" else {}, student)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = m.loss_terms(Batch(x, y, labeled, torch.arange(B), [t]), 0)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values()), name
        sum(m.weigh(terms).values()).backward()
        assert student.weight.grad.dtype == torch.float32
