"""The fused KD and DKD losses equal the plain formulas, in value and in gradient."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdengine.losses.fused import (TeacherCache, dkd_fused_terms, dkd_teacher_tables, kd_ce_terms,
                                   kd_teacher_tables)
from kdengine.losses.logits import dkd_terms, kd_loss, kd_loss_unscaled


def _logits(seed=0, n=16, k=10, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g, dtype=dtype) * scale,
            torch.randn(n, k, generator=g, dtype=dtype) * scale,
            torch.randint(0, k, (n,), generator=g))


def _grad(fn, s):
    s = s.clone().requires_grad_(True)
    fn(s).backward()
    return s.grad


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_kd_and_ce_equal_the_plain_losses(T, seed):
    s, t, y = _logits(seed)
    log_p = TeacherCache(t).log_probs(T)
    kd, ce = kd_ce_terms(s, log_p, y, T)
    assert torch.allclose(kd, kd_loss(s, t, T), atol=1e-10)
    assert torch.allclose(ce, F.cross_entropy(s, y), atol=1e-10)
    unscaled, _ = kd_ce_terms(s, log_p, None, T, scale=1.0)
    assert torch.allclose(unscaled, kd_loss_unscaled(s, t, T), atol=1e-10)
    # gradients of a weighted sum, as the trainer forms it
    w_kd, w_ce = 0.9, 0.3
    fused = _grad(lambda z: sum(w * v for w, v in zip((w_kd, w_ce), kd_ce_terms(z, log_p, y, T))), s)
    plain = _grad(lambda z: w_kd * kd_loss(z, t, T) + w_ce * F.cross_entropy(z, y), s)
    assert torch.allclose(fused, plain, atol=1e-10)


def test_fused_kd_passes_gradcheck_and_masks_unlabelled_samples():
    s, t, y = _logits(2, n=6, k=5)
    lab = torch.tensor([True, False, True, True, False, False])
    log_p = TeacherCache(t).log_probs(3.0)
    torch.autograd.gradcheck(lambda z: kd_ce_terms(z, log_p, y, 3.0, labeled=lab),
                             (s.clone().requires_grad_(True),))
    _, ce = kd_ce_terms(s, log_p, y, 3.0, labeled=lab)
    assert torch.allclose(ce, F.cross_entropy(s[lab], y[lab]), atol=1e-10)
    _, none = kd_ce_terms(s, log_p, y, 3.0, labeled=torch.zeros(6, dtype=torch.bool))
    assert none.item() == 0.0


def test_teacher_cache_recomputes_when_T_changes():
    _, t, _ = _logits(3)
    cache = TeacherCache(t)
    a = cache.log_probs(2.0)
    assert cache.log_probs(2.0) is a                       # cached
    b = cache.log_probs(4.0)
    assert torch.allclose(b, F.log_softmax(t / 4.0, -1)) and not torch.allclose(a, b)


def test_teacher_cache_tables_are_the_per_batch_tables_in_the_epochs_order():
    """KD's and DKD's teacher side computed once over the set, then read by slices of an epoch's
    order, equal the tables computed per batch; DKD's target is the teacher's argmax where a sample
    has no label."""
    s, t, y = _logits(6, n=12)
    lab = torch.arange(12) % 3 != 0
    cache = TeacherCache(t, y, lab)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    rows, idx = slice(4, 10), order[4:10]
    log_p = F.log_softmax(t / 4.0, -1)
    target = y.where(lab, log_p.argmax(-1))
    for got, want in zip(cache.in_order(order).dkd_tables(4.0),
                         dkd_teacher_tables(log_p[idx], target[idx])):
        assert torch.allclose(got[rows], want, atol=1e-12) if want.is_floating_point() \
            else torch.equal(got[rows], want)
    for got, want in zip(cache.in_order(order).kd_tables(4.0, 0.5), kd_teacher_tables(log_p[idx], 0.5)):
        assert torch.allclose(got[rows], want, atol=1e-12)
    assert TeacherCache(t).dkd_tables(4.0) is None             # no labels: DKD computes per batch
    fused = dkd_fused_terms(s[idx], None, None, 4.0, tuple(v[rows] for v in cache.in_order(order)
                                                            .dkd_tables(4.0)))
    plain = dkd_terms(s[idx], t[idx], target[idx], 4.0)
    assert all(torch.allclose(fused[k], plain[k], atol=1e-8) for k in ("tckd", "nckd", "p_t"))


@pytest.mark.parametrize("T", [1.0, 4.0, 8.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_dkd_equals_dkd_terms(T, seed):
    s, t, y = _logits(seed)
    log_p = F.log_softmax(t / T, -1)
    fused, plain = dkd_fused_terms(s, log_p, y, T), dkd_terms(s, t, y, T)
    for k in ("tckd", "nckd", "p_t"):
        assert torch.allclose(fused[k], plain[k], atol=1e-8), k
    a, b = 1.0, 8.0
    g_fused = _grad(lambda z: (lambda d: a * d["tckd"] + b * d["nckd"])(dkd_fused_terms(z, log_p, y, T)), s)
    g_plain = _grad(lambda z: (lambda d: a * d["tckd"] + b * d["nckd"])(dkd_terms(z, t, y, T)), s)
    assert torch.allclose(g_fused, g_plain, atol=1e-8)


def test_fused_dkd_passes_gradcheck_and_survives_a_certain_teacher():
    s, t, y = _logits(4, n=5, k=6)
    log_p = F.log_softmax(t / 2.0, -1)
    torch.autograd.gradcheck(lambda z: dkd_fused_terms(z, log_p, y, 2.0)["tckd"] * 1.0
                             + dkd_fused_terms(z, log_p, y, 2.0)["nckd"] * 3.0,
                             (s.clone().requires_grad_(True),))
    # a teacher so sure of the target that 1 - p_t rounds to 0 in float32: still finite
    s32, t32 = s.float(), t.float()
    t32[torch.arange(5), y] = 200.0
    d = dkd_fused_terms(s32.requires_grad_(True), F.log_softmax(t32, -1), y, 1.0)
    (d["tckd"] + d["nckd"]).backward()
    assert all(torch.isfinite(v) for v in d.values()) and torch.isfinite(s32.grad).all()


def test_fused_losses_under_bf16_autocast_return_float_gradients_of_the_input_dtype():
    s, t, y = _logits(5, dtype=torch.float32)
    w = torch.nn.Linear(10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = w(s)
        assert z.dtype == torch.bfloat16
        kd, ce = kd_ce_terms(z, F.log_softmax(t / 4, -1), y, 4.0)
        d = dkd_fused_terms(z, F.log_softmax(t / 4, -1), y, 4.0)
    assert kd.dtype == torch.float32 and d["tckd"].dtype == torch.float32
    (kd + ce + d["tckd"] + d["nckd"]).backward()
    assert w.weight.grad is not None and torch.isfinite(w.weight.grad).all()


# -- closed-form steps: Method.step_loss overrides against the default (the graph of loss_terms) ---
def _method_and_batch(name, params, all_labeled=True, n=192, b=64, k=10, d=8, seed=0, rows=None):
    """A method on a small MLP student with a cached teacher, and one batch read the trainer's way
    (tables in an epoch's order, the batch a slice of them)."""
    from kdengine import get_method_class
    from kdengine.methods import Batch, TrainContext
    from kdengine.run.trainer import CachedRows
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(n, d, generator=g), torch.randn(n, k, generator=g) * 3
    y = torch.randint(0, k, (n,), generator=g)
    labeled = torch.ones(n, dtype=torch.bool) if all_labeled else torch.arange(n) % 3 > 0
    torch.manual_seed(seed)
    student = torch.nn.Sequential(torch.nn.Linear(d, 12), torch.nn.ReLU(), torch.nn.Linear(12, k))
    cls = get_method_class(name)
    ctx = TrainContext(steps_per_epoch=n // b, epochs=4, n_classes=k, input_shape=(d,),
                       device=torch.device("cpu"))
    teacher = torch.nn.Linear(d, k)
    method = cls(student, [teacher], cls.Params(**params), ctx)
    perm = torch.randperm(n, generator=g)
    caches = [TeacherCache(t, y, None if all_labeled else labeled).in_order(perm)]
    rows = slice(b, 2 * b) if rows is None else rows
    ys = y.where(labeled, -1)[perm]
    batch = Batch(x[perm][rows], ys[rows], labeled[perm][rows], perm[rows],
                  CachedRows(caches, rows), all_labeled, caches, rows)
    return method, batch


def _step_grads(method, batch, step, closed_form: bool):
    from kdengine.methods.base import Method
    method.student.zero_grad(set_to_none=True)
    how = type(method).step_loss if closed_form else Method.step_loss
    terms, root, grad = how(method, batch, step)
    root.backward(grad)
    return ({k: float(v.detach()) for k, v in terms.items()},     # deferred terms compute here
            [p.grad.clone() for p in method.student.parameters()], grad is not None)


@pytest.mark.parametrize("name,params,step", [
    ("hinton", {"T": 4.0, "soft_weight": 0.9, "hard_weight": 0.1}, 0),
    ("hinton", {"T": 1.0, "soft_weight": 0.5, "hard_weight": 0.5}, 0),
    ("hinton", {"T": 3.0, "soft_weight": 1.0, "hard_weight": 0.0, "t_squared": False}, 0),
    ("dkd", {"T": 4.0, "alpha": 1.0, "beta": 8.0, "ce_weight": 1.0, "warmup_epochs": 2.0}, 1),
    ("dkd", {"T": 2.0, "alpha": 0.5, "beta": 2.0, "ce_weight": 0.0, "warmup_epochs": 0.0}, 5),
])
def test_closed_form_steps_give_the_graphs_terms_and_gradients(name, params, step):
    method, batch = _method_and_batch(name, params)
    terms, grads, closed = _step_grads(method, batch, step, closed_form=True)
    ref_terms, ref_grads, _ = _step_grads(method, batch, step, closed_form=False)
    assert closed                                   # the closed form was taken, not the default
    assert terms.keys() == ref_terms.keys()
    for k in terms:
        assert terms[k] == pytest.approx(ref_terms[k], rel=1e-5, abs=1e-6), k
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["hinton", "dkd"])
def test_closed_form_steps_leave_partly_labelled_sets_to_the_graph(name):
    method, batch = _method_and_batch(name, {}, all_labeled=False)
    assert not _step_grads(method, batch, 0, closed_form=True)[2]


def test_closed_form_step_under_bf16_autocast_gives_a_gradient_of_the_logits_dtype():
    method, batch = _method_and_batch("hinton", {})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms, root, grad = method.step_loss(batch, 0)
    assert grad.dtype == root.dtype == torch.bfloat16
    assert all(v.value().dtype == torch.float32 for v in terms.values())
    root.backward(grad)
    assert all(torch.isfinite(p.grad).all() for p in method.student.parameters())


@pytest.mark.parametrize("b,k", [(64, 10), (256, 3), (8, 10), (64, 16), (32, 100)])
def test_log_softmax_rows_equals_log_softmax_whichever_layout_it_takes(b, k):
    from kdengine.losses.fused import log_softmax_rows
    x = torch.randn(b, k, generator=torch.Generator().manual_seed(b + k)) * 4
    torch.testing.assert_close(log_softmax_rows(x), x.log_softmax(-1), rtol=0, atol=2e-6)


@pytest.mark.parametrize("name,params", [("hinton", {"T": 3.0}), ("dkd", {"warmup_epochs": 2.0})])
def test_a_windows_deferred_terms_computed_at_once_equal_each_step_alone(name, params):
    """window_values computes a log window's deferred terms in one pass over its steps; each equals
    the step computed alone, also when a smaller last batch makes the steps unlike."""
    from kdengine.losses.deferred import window_values
    window: dict[str, list] = {}
    for step, rows in enumerate([slice(0, 64), slice(64, 128), slice(128, 160)]):
        method, batch = _method_and_batch(name, params, rows=rows)
        terms, _, _ = method.step_loss(batch, step)
        for k, v in terms.items():
            window.setdefault(k, []).append(v)
    values = window_values(window)
    for k, vs in window.items():
        alone = torch.stack([v.value() for v in vs])
        torch.testing.assert_close(values[k], alone, rtol=1e-5, atol=1e-6)
    uniform = window_values({k: vs[:2] for k, vs in window.items()})   # one pass over 2 steps
    for k in window:
        torch.testing.assert_close(uniform[k], values[k][:2], rtol=1e-5, atol=1e-6)


def test_closed_form_dkd_survives_a_certain_teacher_and_equals_the_fused_graph():
    # p_y rounds to 1 in float32: 1 - p_y comes from the other classes' log-sum, as in the graph's
    from kdengine.losses.closed_form import dkd_step
    from kdengine.losses.deferred import window_values
    from kdengine.losses.fused import dkd_step_columns
    g = torch.Generator().manual_seed(3)
    t = torch.randn(16, 10, generator=g)
    t[:, 0] += 60.0
    y = torch.zeros(16, dtype=torch.long)
    s = torch.randn(16, 10, generator=g, requires_grad=True)
    log_p = F.log_softmax(t / 2.0, -1)
    table, is_y = dkd_step_columns(log_p, y)
    terms, grad = dkd_step(s, table, is_y, 2.0, 1.0, 8.0, 1.0, y, 0.5)
    d = dkd_fused_terms(s, log_p, y, 2.0)
    total = d["tckd"] + 8.0 * d["nckd"] + 0.5 * F.cross_entropy(s, y)
    (ref,) = torch.autograd.grad(total, s)
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-7)
    values = window_values({k: [v] for k, v in terms.items()})
    assert all(torch.isfinite(v).all() for v in values.values())
    torch.testing.assert_close(values["tckd"][0], d["tckd"].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values["nckd"][0], d["nckd"].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine_entry", [True, False])
def test_backprop_of_a_closed_form_gradient_equals_tensor_backward(monkeypatch, engine_entry):
    # backprop() hands a closed-form step's gradient straight to autograd's engine (or, where
    # PyTorch lacks that entry, to Tensor.backward): the same parameter gradients either way
    from kdengine.run import trainer
    if not engine_entry:
        monkeypatch.setattr(trainer, "_engine_run_backward", None)
    method, batch = _method_and_batch("hinton", {"T": 4.0})
    grads = []
    for how in (trainer.backprop, lambda root, grad: root.backward(grad)):
        method.student.zero_grad(set_to_none=True)
        _, root, grad = method.step_loss(batch, 0)
        assert grad is not None
        how(root, grad)
        grads.append([p.grad.clone() for p in method.student.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    with pytest.raises(RuntimeError, match="shape"):      # a wrong gradient: the public call's error
        _, root, grad = method.step_loss(batch, 0)
        trainer.backprop(root, grad[:1])
