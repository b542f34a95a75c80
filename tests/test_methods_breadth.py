"""Method breadth: noisy teacher, Sobolev, FitNets, DML, multi-teacher, specialists,
adversarial. For each: finite terms, gradients only into the student and its helper modules (never a
teacher), and a short run through the Engine; plus each method's identity."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from kdengine.core.events import Metrics, Phase
from kdengine.core.config import ModelConfig, RunConfig
from kdengine.data.datasets import load_data
from kdengine.losses.logits import kd_loss, logit_mse
from kdengine.methods import Batch, TrainContext, get_method_class
from kdengine.models.families import build_model

NEW = ["noisy_teacher", "sobolev", "fitnet", "fitnet_mdistiller", "dml", "multi_teacher",
       "specialists", "adversarial"]
# Small knobs so setup (extra teachers, specialists) stays quick.
FAST = {"multi_teacher": {"teachers": ["mlp-1-64"]},
        "specialists": {"specialist_epochs": 2, "n_specialists": 2, "combine_steps": 10},
        "fitnet": {}, "dml": {"cohort_size": 3}}
EXPECTED_TERMS = {"noisy_teacher": {"mse"}, "sobolev": {"mse", "sobolev"},
                  # fitnet: its first stage (the hint alone) at step 0 and in a one-epoch run
                  "fitnet": {"hint"}, "fitnet_mdistiller": {"hint", "ce"},
                  "dml": {"ce", "kl", "peer_ce", "peer_kl"},
                  "multi_teacher": {"kd", "ce"}, "specialists": {"kd", "ce"},
                  "adversarial": {"kd", "ce", "adv", "disc"}}


def _cfg(method: str, params: dict | None = None, **train) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits"},
        "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 1, "width": 64},
                    "epochs": 3},
        "student": {"arch": "mlp", "depth": 1, "width": 16},
        "method": {"name": method, "params": params or {}},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.003, "seed": 0, "log_every": 5, **train}})


def _ctx(cfg: RunConfig, data, events=None) -> TrainContext:
    return TrainContext(steps_per_epoch=10, epochs=2, n_classes=data.n_classes,
                        input_shape=data.input_shape, device=torch.device("cpu"),
                        data_kind=data.kind, seed=0, config=cfg,
                        emit=events.append if events is not None else (lambda e: None))


def _method(name: str, params: dict | None = None, teacher=None, student_cfg=None, data=None):
    """A method on digits with a trained (cached) teacher, after setup()."""
    from kdengine.teachers.sources import get_teacher
    cfg = _cfg(name, {**FAST.get(name, {}), **(params or {})})
    if student_cfg is not None:
        cfg.student = student_cfg
    data = data or load_data(cfg.data)
    cls = get_method_class(name)
    teachers = []
    if cls.needs_teacher:
        teacher = teacher or get_teacher(cfg, data, torch.device("cpu"))[0]
        teachers = [teacher]
    torch.manual_seed(0)
    student = build_model(cfg.student, data.input_shape, data.n_classes)
    m = cls(student, teachers, cfg.method.params, _ctx(cfg, data))
    m.setup(data)
    return m, data


def _batch(data, n=32, labeled=True):
    idx = torch.arange(n)
    lab = torch.ones(n, dtype=torch.bool) if labeled else torch.zeros(n, dtype=torch.bool)
    return Batch(data.transfer.x[idx], data.transfer.y[idx], lab, idx)


@pytest.mark.parametrize("name", NEW)
def test_terms_finite_and_gradients_only_reach_student_and_helpers(name):
    m, data = _method(name)
    # Switch the teachers' gradients back on: a method that ran them outside no_grad, or forgot to
    # detach their outputs, would now leak gradients into them.
    frozen = [t for t in m.teachers]
    for t in frozen:
        t.requires_grad_(True)
        t.zero_grad(set_to_none=True)    # a teacher trained just now keeps its last .grad
    m.train(True)
    terms = m.loss_terms(_batch(data), 0)
    assert set(terms) == EXPECTED_TERMS[name]
    for k, v in terms.items():
        assert v.dim() == 0 and torch.isfinite(v), (k, v)
    sum(terms.values()).backward()
    for t in frozen:
        assert all(p.grad is None for p in t.parameters()), f"{name}: gradient reached a teacher"
        assert not t.training, f"{name}: teacher left in train mode"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.student.parameters())
    for mod in m.extra_modules():
        if name == "adversarial":     # stepped by its own optimiser, frozen for the trainer's
            assert not any(p.requires_grad for p in mod.parameters())
        else:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters()), \
                f"{name}: a helper module got no gradient"
    if name == "specialists":
        for s in m.specialists:
            assert all(p.grad is None and not p.requires_grad for p in s.parameters())


def test_every_new_method_trains_on_digits_through_the_engine(runs_dir):
    from kdengine.run.engine import Engine
    eng = Engine(max_workers=1)
    try:
        ids = {}
        for name in NEW:
            ids[name] = eng.submit(_cfg(name, FAST.get(name)), owner="t")
        ids["dml-online"] = eng.submit(_cfg("dml", {"mode": "online"}), owner="t")
        ids["fitnet-stagewise"] = eng.submit(
            _cfg("fitnet", {"schedule": "stagewise", "hint_epochs": 1}, epochs=2), owner="t")
        for key, rid in ids.items():
            assert eng.wait(rid, timeout=240) == "done", (key, eng.snapshot(rid).error)
        for name in NEW:
            s = eng.snapshot(ids[name])
            got = {k.split("/", 1)[1] for k in s.series if k.startswith("loss/")}
            assert EXPECTED_TERMS[name] | {"total"} <= got, (name, got)
            assert 0.0 <= s.summary["final_test_acc"] <= 1.0
        assert "peer_test_acc" in eng.snapshot(ids["dml"]).latest
        assert "ensemble_test_acc" in eng.snapshot(ids["multi_teacher"]).latest
        assert "disc_acc" in eng.snapshot(ids["adversarial"]).latest
        spec = eng.snapshot(ids["specialists"])
        assert {"ensemble_test_acc", "generalist_test_acc"} <= set(spec.latest)
        arts = spec.artifacts["specialists"]
        assert len(arts["clusters"]) == 2 and len(arts["soft_confusion"]) == 10
        # stagewise FitNet: the hint alone in epoch 1, KD alone after it
        st = eng.snapshot(ids["fitnet-stagewise"]).series
        assert max(e for _, e, _ in st["loss/hint"]) <= 1.0
        assert min(e for _, e, _ in st["loss/kd"]) > 1.0
    finally:
        eng.shutdown()


# ---- noisy teacher -----------------------------------------------------------------------------
def test_noisy_teacher_with_sigma_zero_equals_logit_mse():
    from kdengine.methods.noisy_teacher import perturb_logits
    m, data = _method("noisy_teacher", {"sigma": 0.0, "alpha": 1.0})
    b = _batch(data)
    t = m.teacher_logits(b)
    expected = logit_mse(m.student(b.x), t)
    assert torch.allclose(m.loss_terms(b, 0)["mse"], expected, atol=0, rtol=0)
    # and noise > 0 changes the target, on exactly round(alpha * batch) rows
    z = torch.randn(10, 4)
    for mode in ("multiplicative", "additive"):
        out = perturb_logits(z, 0.5, 0.3, mode, torch.Generator().manual_seed(1))
        changed = (out != z).any(1)
        assert int(changed.sum()) == 3
    # the student-side switch perturbs the student and still trains it
    m2, _ = _method("noisy_teacher", {"noisy_student": True, "sigma": 0.9, "alpha": 1.0})
    loss = m2.loss_terms(b, 0)["mse"]
    loss.backward()
    assert not torch.allclose(loss, logit_mse(m2.student(b.x), t))
    assert m2.student.head.weight.grad.abs().sum() > 0


# ---- Sobolev -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_sobolev_jvp_equals_full_jacobian_times_v(arch):
    from kdengine.methods.sobolev import jacobian_projection, random_unit_vectors
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch, 2, 8), (1, 8, 8), 5).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.double)
    v = random_unit_vectors(x, 1, torch.Generator().manual_seed(0))
    assert torch.allclose(v.flatten(1).norm(dim=1), torch.ones(4, dtype=torch.double))
    for train in (False, True):   # BatchNorm in train mode couples the batch: compare whole-batch J
        model.train(train)
        out, jv = jacobian_projection(model, x, v)
        J = torch.autograd.functional.jacobian(model, x)          # (B, C, B, 1, 8, 8)
        full = torch.einsum("bcnijk,nijk->bc", J, v)
        assert torch.allclose(jv, full, atol=1e-10)
        assert torch.allclose(out, model(x), atol=1e-12)


def test_sobolev_gradients_reach_student_through_the_jvp_and_teacher_stays_constant():
    m, data = _method("sobolev", {"value_weight": 0.0, "deriv_weight": 1.0})
    b = _batch(data, 8)
    terms = m.weigh(m.loss_terms(b, 0))       # value_weight 0: the value term weighs nothing
    assert float(terms["mse"].detach()) == 0.0
    terms["sobolev"].backward()      # the derivative term alone trains the student
    assert m.student.features[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.teachers[0].parameters())


def test_sobolev_cached_teacher_jacobians_give_the_same_terms_as_its_jvp():
    from kdengine.models import logits_of
    m, data = _method("sobolev", {"k": 3})
    assert m.t_jac is not None and m.cache_teacher_logits     # digits: small enough to cache
    b = _batch(data, 16)
    b.teacher_logits = [logits_of(m.teachers[0], data.transfer.x, torch.device("cpu"))[b.idx]]
    state = m.gen.get_state()
    cached = m.loss_terms(b, 0)
    m.gen.set_state(state)
    b.teacher_logits = None                                   # forces the per-step teacher JVP
    direct = m.loss_terms(b, 0)
    for k in ("mse", "sobolev"):
        assert torch.allclose(cached[k], direct[k], rtol=1e-5, atol=1e-7), k


def test_sobolev_field_artifact_on_2d_data():
    cfg = RunConfig.from_dict({"data": {"name": "moons", "n_samples": 200},
                               "teacher": {"model": {"arch": "mlp", "depth": 1, "width": 16},
                                           "epochs": 2},
                               "student": {"arch": "mlp", "depth": 1, "width": 8},
                               "method": {"name": "sobolev"}})
    data = load_data(cfg.data)
    teacher = build_model(cfg.teacher.model, data.input_shape, data.n_classes).eval()
    m, _ = _method("sobolev", teacher=teacher, student_cfg=cfg.student, data=data)
    field = m.artifacts()["sobolev_field"]
    assert len(field["teacher"]["logits"]) == 21 * 21
    assert torch.tensor(field["student"]["grads"]).shape == (441, 2, 2)


# ---- FitNet ------------------------------------------------------------------------------------
def test_fitnet_regressor_maps_student_features_to_teacher_features():
    m, data = _method("fitnet", {"regressor": "linear", "schedule": "joint"})
    reg = m.regressor
    assert isinstance(reg, torch.nn.Linear) and (reg.in_features, reg.out_features) == (16, 64)
    assert set(m.loss_terms(_batch(data), 0)) == {"hint", "kd", "ce"}     # joint: all from step 0
    # CNN pair: a 1x1 conv, the student map pooled to the teacher's size
    cnn_t = build_model(ModelConfig("cnn", 3, 8), data.input_shape, 10).eval()
    m2, _ = _method("fitnet", {"regressor": "linear"}, teacher=cnn_t,
                    student_cfg=ModelConfig("cnn", 1, 4), data=data)
    assert isinstance(m2.regressor, torch.nn.Conv2d)
    assert torch.isfinite(m2.loss_terms(_batch(data), 0)["hint"])
    with pytest.raises(Exception, match="no module"):
        _method("fitnet", {"teacher_layer": "nope"})


def test_fitnet_nonlinear_regressor_is_conv_bn_relu_on_maps_and_linear_bn_relu_on_vectors():
    m, data = _method("fitnet", {"regressor": "conv_bn_relu"})
    kinds = [type(x) for x in m.regressor]
    assert kinds == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU]
    cnn_t = build_model(ModelConfig("cnn", 3, 8), data.input_shape, 10).eval()
    m2, _ = _method("fitnet", {"regressor": "conv_bn_relu"}, teacher=cnn_t,
                    student_cfg=ModelConfig("cnn", 1, 4), data=data)
    conv, bn, relu = m2.regressor          # the student's 4x4 map to the hint's 2x2: a 3x3 kernel
    assert conv.kernel_size == (3, 3) and isinstance(bn, torch.nn.BatchNorm2d)
    hint = m2.loss_terms(_batch(data), 0)["hint"]
    hint.backward()
    assert torch.isfinite(hint) and conv.weight.grad.abs().sum() > 0


# ---- DML ---------------------------------------------------------------------------------------
def test_dml_terms_are_ce_plus_kl_to_each_peer():
    m, data = _method("dml", {"cohort_size": 3, "T": 2.0, "kl_weight": 0.5, "update": "joint"})
    assert m.needs_teacher is False and len(m.peers) == 2
    b = _batch(data)
    zs = [m.student(b.x)] + [p(b.x) for p in m.peers]
    terms = m.weigh(m.loss_terms(b, 0))
    kl = (kd_loss(zs[0], zs[1], 2.0) + kd_loss(zs[0], zs[2], 2.0)) / 2
    assert torch.allclose(terms["kl"], 0.5 * kl, atol=1e-6)
    assert torch.allclose(terms["ce"], F.cross_entropy(zs[0], b.y), atol=1e-6)
    online, _ = _method("dml", {"mode": "online"})
    assert len(online.peers) == 1 and online.peers[0].features[1].out_features == 64


def test_dml_alternating_steps_the_peers_first_then_the_student_learns_from_them():
    m, data = _method("dml", {"update": "alternating", "T": 2.0})
    assert m.extra_modules() == []                      # the peers have their own optimiser
    b = _batch(data)
    before = [p.detach().clone() for p in m.peers.parameters()]
    terms = m.loss_terms(b, 0)
    after = list(m.peers.parameters())
    assert any(not torch.equal(x, y) for x, y in zip(before, after))    # the peers stepped
    with torch.no_grad():
        z_peers = [p(b.x) for p in m.peers]             # their updated predictions
    z = m.student(b.x)
    want = sum(kd_loss(z, zp, 2.0) for zp in z_peers) / len(z_peers)
    assert torch.allclose(terms["kl"], want, atol=1e-6)
    assert not terms["peer_kl"].requires_grad and terms["kl"].requires_grad
    terms["kl"].backward()
    assert m.student.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,params,own_opt", [
    ("dml", {"update": "alternating", "cohort_size": 3}, "peer_opt"),
    ("adversarial", {}, "d_opt"),
])
def test_a_resumed_run_continues_what_its_method_trains_with_an_optimiser_of_its_own(
        tmp_path, name, params, own_opt):
    """Stopped after epoch 2 of 4 and resumed, it ends where the run without a stop ends: the
    student, and what the method trains with its own optimiser (DML's alternating peers, the
    adversarial discriminator) with that optimiser's state."""
    from kdengine.core.checkpoints import RunCheckpoint
    from kdengine.core.events import Checkpoint
    from kdengine.run.control import Control, StopRequested
    from kdengine.run.units import make_trainer
    torch.set_num_threads(1)
    cfg = _cfg(name, params, epochs=4)

    def last(events) -> bytes:
        return [e for e in events if isinstance(e, Checkpoint)][-1].data
    whole_events, split_events, resumed_events = [], [], []
    make_trainer(cfg, whole_events.append).run()
    ctl = Control()

    def stop_after_epoch_2(ev):
        split_events.append(ev)
        if isinstance(ev, Metrics) and ev.epoch == 2 and "test_acc" in ev.values:
            ctl.stop()
    with pytest.raises(StopRequested):
        make_trainer(cfg, stop_after_epoch_2, ctl).run()
    assert RunCheckpoint.from_bytes(last(split_events)).epoch == 2
    make_trainer(cfg, resumed_events.append, resume_from=last(split_events)).run()
    whole = RunCheckpoint.from_bytes(last(whole_events))
    split = RunCheckpoint.from_bytes(last(resumed_events))
    torch.testing.assert_close(split.state_dict, whole.state_dict, rtol=0, atol=0)
    torch.testing.assert_close(split.method, whole.method, rtol=0, atol=0)
    assert whole.method[own_opt]["state"]          # the optimiser's Adam moments are in it


# ---- multi-teacher -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["avg_probs", "avg_logits", "confidence"])
def test_multi_teacher_with_one_teacher_equals_that_teachers_kd(how):
    params = {"teachers": [], "aggregation": how, "T": 3.0, "soft_weight": 0.7, "hard_weight": 0.2}
    m, data = _method("multi_teacher", params)
    h, _ = _method("hinton", {"T": 3.0, "soft_weight": 0.7, "hard_weight": 0.2})
    h.student.load_state_dict(m.student.state_dict())
    b = _batch(data)
    got, want = m.weigh(m.loss_terms(b, 0)), h.weigh(h.loss_terms(b, 0))
    assert set(got) == set(want) == {"kd", "ce"}
    for k in got:
        assert torch.allclose(got[k], want[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("how", ["avg_probs", "avg_logits", "confidence"])
def test_multi_teacher_aggregates(how):
    from kdengine.methods.multi_teacher import aggregate_log_target, multi_kd_loss
    torch.manual_seed(0)
    s, t1, t2 = torch.randn(3, 6, 5).unbind(0)
    # identical teachers are one teacher, whatever the aggregation
    assert torch.allclose(multi_kd_loss(s, [t1, t1], 2.0, how), kd_loss(s, t1, 2.0), atol=1e-6)
    lt = aggregate_log_target([t1, t2], 2.0, how)
    assert torch.allclose(lt.exp().sum(-1), torch.ones(6), atol=1e-6)
    if how == "avg_probs":
        want = (F.softmax(t1 / 2, -1) + F.softmax(t2 / 2, -1)) / 2
        assert torch.allclose(lt.exp(), want, atol=1e-6)


def test_multi_teacher_setup_adds_the_extra_teachers_frozen():
    m, _ = _method("multi_teacher", {"teachers": ["mlp-1-64", "mlp-2-128"]})
    assert len(m.teachers) == 3
    assert all(not t.training and not any(p.requires_grad for p in t.parameters())
               for t in m.teachers)
    assert 0.5 < m.epoch_metrics(0)["ensemble_test_acc"] <= 1.0


# ---- specialists -------------------------------------------------------------------------------
def _em_reference(p_gen, specs, subsets, act, iters=3000):
    """The same minimum by a different algorithm: EM (multiplicative) fixed-point iterations."""
    from kdengine.methods.specialists import collapse_matrix
    mats = [collapse_matrix(s, p_gen.shape[1]) for s in subsets]
    n_terms = 1 + act.float().sum(1, keepdim=True)
    q = p_gen.clone()
    for _ in range(iters):
        acc = p_gen.clone()
        for m, (pm, cm) in enumerate(zip(specs, mats)):
            acc = acc + act[:, m:m + 1].float() * ((pm / (q @ cm)) @ cm.T * q)
        q = acc / n_terms
    return q


def test_specialists_combiner_returns_a_distribution_at_the_kl_minimum():
    from kdengine.methods.specialists import active_specialists, combine, combine_objective
    torch.manual_seed(0)
    B, N = 32, 10
    p_gen = F.softmax(torch.randn(B, N) * 3, -1)
    subsets = [[1, 2, 3], [4, 5, 6, 7]]
    specs = [F.softmax(torch.randn(B, len(s) + 1) * 3, -1) for s in subsets]
    act = active_specialists(p_gen, subsets, 3)
    assert act.any() and not act.all()
    log_q = combine(p_gen, specs, subsets, act, steps=100)
    q = log_q.exp()
    assert (q >= 0).all() and torch.allclose(q.sum(-1), torch.ones(B), atol=1e-5)
    ref = _em_reference(p_gen, specs, subsets, act)
    assert torch.allclose(q, ref, atol=1e-3)
    gap = combine_objective(p_gen, specs, subsets, act, log_q) \
        - combine_objective(p_gen, specs, subsets, act, ref.log())
    assert gap.max() < 1e-3
    # the default few steps already land close
    assert torch.allclose(combine(p_gen, specs, subsets, act).exp(), ref, atol=1e-2)
    # inactive specialists are ignored: rows with none active return the generalist
    none = torch.zeros(B, 2, dtype=torch.bool)
    assert torch.allclose(combine(p_gen, specs, subsets, none, steps=20).exp(), p_gen, atol=1e-4,
                          rtol=1e-3)


def test_specialists_one_specialist_covering_all_classes_gives_the_average():
    """min_q KL(p_gen || q) + KL(p_m || q) is the mean of the two distributions (the dustbin of a
    specialist that covers every class is empty, so C_m q = q)."""
    from kdengine.methods.specialists import combine
    torch.manual_seed(0)
    B, N = 16, 10
    p_gen = F.softmax(torch.randn(B, N) * 3, -1)
    p2 = F.softmax(torch.randn(B, N) * 3, -1)
    p_m = torch.cat([p2, torch.zeros(B, 1)], 1)
    log_q = combine(p_gen, [p_m], [list(range(N))], torch.ones(B, 1, dtype=torch.bool))
    assert torch.allclose(log_q, ((p_gen + p2) / 2).log(), atol=1e-3)


def test_specialists_clusters_group_the_most_confused_classes():
    from kdengine.methods.specialists import cluster_classes, collapse_matrix, soft_confusion
    conf = torch.eye(6) * 0.8
    conf[0, 4] = conf[4, 0] = 0.3
    conf[2, 5] = 0.25
    conf[1, 3] = conf[3, 1] = 0.1
    assert cluster_classes(conf, 3, 2) == [[0, 4], [2, 5], [1, 3]]
    conf[2, 0] = 0.05                    # 2 is the class most confused with the pair {0, 4}
    assert cluster_classes(conf, 1, 3) == [[0, 2, 4]]
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    c = soft_confusion(probs, torch.tensor([0, 1, 0]), 2)
    assert torch.allclose(c, torch.tensor([[0.75, 0.25], [0.2, 0.8]]))
    cm = collapse_matrix([2, 0], 4)
    assert cm.tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]]


def test_specialists_setup_reports_progress_and_exposes_clusters():
    from kdengine.teachers.sources import get_teacher
    cfg = _cfg("specialists", FAST["specialists"])
    data = load_data(cfg.data)
    events = []
    teacher = get_teacher(cfg, data, torch.device("cpu"))[0]
    cls = get_method_class("specialists")
    m = cls(build_model(cfg.student, data.input_shape, 10), [teacher],
            cfg.method.params, _ctx(cfg, data, events))
    m.setup(data)
    phases = [e for e in events if isinstance(e, Phase) and e.phase == "specialists"]
    assert phases and phases[-1].progress == 1.0
    arts = m.artifacts()["specialists"]
    flat = [c for cl in arts["clusters"] for c in cl]
    assert len(flat) == len(set(flat)) == 10          # K-means puts every class in one group
    assert m.artifacts() == {}          # sent once
    q = m.log_q.exp()
    assert q.shape == (len(data.transfer), 10) and torch.allclose(q.sum(-1), torch.ones(len(q)),
                                                                  atol=1e-5)


# ---- adversarial -------------------------------------------------------------------------------
def test_adversarial_discriminator_steps_itself_and_is_kept_from_the_trainers_optimiser():
    m, data = _method("adversarial")
    d = m.extra_modules()[0]
    assert not any(p.requires_grad for p in d.parameters())   # the trainer collects none of them
    before = [p.detach().clone() for p in d.parameters()]
    terms = m.loss_terms(_batch(data), 0)
    assert not terms["disc"].requires_grad and terms["disc"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, d.parameters()))
    terms["adv"].backward()
    assert all(p.grad is None for p in d.parameters())
    assert m.student.head.weight.grad.abs().sum() > 0
    assert 0.0 <= m.epoch_metrics(0)["disc_acc"] <= 1.0


def test_new_methods_are_listed_with_validated_params():
    from kdengine.core.knobs import ConfigError
    for name in NEW:
        cls = get_method_class(name)
        assert cls.paper and cls.title
        knobs = {f.name for f in dataclasses.fields(cls.Params)}
        assert set(cls.weight_knobs.values()) <= knobs and cls.temperature in knobs | {None}
        assert "arXiv" in (__import__(cls.__module__, fromlist=["x"]).__doc__ or "")
    with pytest.raises(ConfigError):
        _cfg("multi_teacher", {"teachers": ["mlp-9-9999"]})
    with pytest.raises(ConfigError):
        _cfg("noisy_teacher", {"alpha": 1.5})
    assert _cfg("multi_teacher", {"teachers": "mlp-1-64, mlp-2-128"}).method.params.teachers \
        == ["mlp-1-64", "mlp-2-128"]
    assert math.isclose(_cfg("sobolev").method.params.deriv_weight, 1.0)


# ---- FitNets as in the paper (Romero et al. 2015), mdistiller's recipe as a named variant -------
def _cnn_fitnet(name: str = "fitnet", params: dict | None = None, student_depth: int = 3):
    data = load_data(_cfg(name).data)
    torch.manual_seed(1)
    teacher = build_model(ModelConfig("cnn", 3, 8), data.input_shape, 10).eval()
    m, _ = _method(name, params, teacher=teacher, student_cfg=ModelConfig("cnn", student_depth, 4),
                   data=data)
    return m, data


def test_fitnet_default_is_stagewise_from_the_middle_stage_through_a_regressor_sized_to_the_hint():
    m, data = _cnn_fitnet()
    b = _batch(data)
    terms = m.loss_terms(b, 0)
    assert set(terms) == {"hint"}                           # stage 1: the hint alone
    # the guided layer is the student's middle stage (block 2 of 3: 8 channels at 2x2, not the
    # last stage's 16), the hint the teacher's middle stage (16 channels, not 32)
    assert m.s_hook.out.shape[1:] == (8, 2, 2) and m.t_hook.out.shape[1:] == (16, 2, 2)
    conv, bn, relu = m.regressor                            # conv-BN-ReLU, a 1x1 conv here
    assert conv.kernel_size == (1, 1) and isinstance(bn, torch.nn.BatchNorm2d)
    assert isinstance(relu, torch.nn.ReLU)
    after = m.loss_terms(b, int(m.params.hint_epochs * m.ctx.steps_per_epoch))
    assert set(after) == {"kd", "ce"}                       # stage 2: KD on the whole student
    # 2 hint epochs, capped at half of this 2-epoch run: the classifier trains in the second
    assert m.hint_stage() == 1.0 and set(m.loss_terms(b, m.ctx.steps_per_epoch)) == {"kd", "ce"}
    # a one-block student's middle stage is its only block (4 channels at 4x4): the paper's
    # regressor is a valid convolution whose kernel brings 4x4 down to the hint's 2x2
    small, _ = _cnn_fitnet(student_depth=1)
    assert small.regressor[0].kernel_size == (3, 3) and small.regressor[0].padding == (0, 0)
    small.loss_terms(b, 0)
    assert small.regressor(small.s_hook.out).shape[1:] == (16, 2, 2)
    # MLPs: the middle hidden layer and a Linear-BN-ReLU regressor
    mlp, _ = _method("fitnet", student_cfg=ModelConfig("mlp", 3, 16))
    mlp.loss_terms(b, 0)
    assert [type(x) for x in mlp.regressor] == [torch.nn.Linear, torch.nn.BatchNorm1d,
                                                torch.nn.ReLU]
    assert mlp.s_hook.out.shape[1:] == (16,)


def test_fitnet_stage_one_trains_only_the_student_up_to_the_guided_layer_and_the_regressor():
    """The trainer's own step, three times in stage 1: the blocks up to the guided layer and the
    regressor move; the last block (weights and BatchNorm statistics) and the head do not."""
    from kdengine.run.trainer import make_optimizer, train_step
    m, data = _cnn_fitnet()
    s = m.student
    later = [s.features[2], s.head]
    before = {k: v.clone() for k, v in s.state_dict().items()}
    reg_before = [p.detach().clone() for p in m.regressor.parameters()]
    params = [p for mod in [s, *m.extra_modules()] for p in mod.parameters()]
    opt = make_optimizer(m.ctx.config.train, params)
    m.train(True)
    for step in range(3):
        train_step(m, _batch(data), step, opt, None)
    after = s.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    late = {f"features.2.{k}" for k in later[0].state_dict()} | {f"head.{k}" for k in
                                                                 later[1].state_dict()}
    assert not moved & late, sorted(moved & late)
    assert any(k.startswith("features.0.") for k in moved)
    assert any(k.startswith("features.1.") for k in moved)
    assert any(not torch.equal(a, p) for a, p in zip(reg_before, m.regressor.parameters()))


def test_fitnet_mdistiller_variant_is_ce_plus_100_hint_mse_in_one_stage_without_kd():
    """mdistiller's FitNet (megvii-research/mdistiller, FITNET: hint layer 2, CE weight 1, feature
    weight 100, conv-BN-ReLU regressor): one stage, no KD term."""
    m, data = _cnn_fitnet("fitnet_mdistiller")
    assert m.term_weights == {"hint": 100.0, "ce": 1.0}
    b = _batch(data)
    for step in (0, 10, 19):
        terms = m.loss_terms(b, step)
        assert set(terms) == {"ce", "hint"}
    assert m.s_hook.out.shape[1:] == (8, 2, 2) and m.t_hook.out.shape[1:] == (16, 2, 2)
    z = m.student(b.x)                             # the same batch: the same BatchNorm statistics
    m.run_teacher(m.teachers[0], b.x)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(z, b.y))
    torch.testing.assert_close(terms["hint"], F.mse_loss(m.regressor(m.s_hook.out), m.t_hook.out),
                               rtol=1e-5, atol=1e-6)


# ---- DML: every model in turn (Zhang et al. 2018, Algorithm 1 and s.3.3) ------------------------
def test_dml_updates_each_peer_in_turn_against_the_latest_predictions_of_the_others():
    """Three models: peer 1 steps against the student and peer 2; peer 2 then steps against the
    student and peer 1 AS UPDATED; the student learns from both updated peers. Replayed by hand
    with plain SGD."""
    import copy
    m, data = _method("dml", {"cohort_size": 3, "T": 2.0})
    tc = m.ctx.config.train
    tc.optimizer, tc.momentum, tc.lr = "sgd", 0.0, 0.5   # a big step: peer 1's update shows
    m.setup(data)                                  # the peers' optimiser from the changed config
    assert m.extra_modules() == []                 # the default: in turn, the paper's Algorithm 1
    b = _batch(data)
    lr = m.ctx.config.train.lr
    p1, p2 = copy.deepcopy(m.peers[0]), copy.deepcopy(m.peers[1])
    with torch.no_grad():
        z_s = m.student(b.x)
    for peer, other in ((p1, p2), (p2, p1)):
        with torch.no_grad():
            z_o = other(b.x)
        z = peer(b.x)
        loss = F.cross_entropy(z, b.y) + (kd_loss(z, z_s, 2.0) + kd_loss(z, z_o, 2.0)) / 2
        grads = torch.autograd.grad(loss, list(peer.parameters()))
        with torch.no_grad():
            for p, g in zip(peer.parameters(), grads):
                p -= lr * g
    terms = m.loss_terms(b, 0)
    for mine, want in zip(m.peers.parameters(), [*p1.parameters(), *p2.parameters()]):
        torch.testing.assert_close(mine, want, rtol=1e-5, atol=1e-6)
    z = m.student(b.x)
    with torch.no_grad():
        kl = (kd_loss(z, p1(b.x), 2.0) + kd_loss(z, p2(b.x), 2.0)) / 2
    torch.testing.assert_close(terms["kl"], kl, rtol=1e-5, atol=1e-6)


def test_dml_peers_follow_the_runs_learning_rate_schedule(runs_dir):
    """The peers' own optimiser (models in turn) decays with the run's schedule, as the student's
    does: after a cosine run both end at the same learning rate."""
    from kdengine.run.units import make_trainer
    cfg = _cfg("dml", {"cohort_size": 3}, epochs=2, scheduler="cosine")
    trainer = make_trainer(cfg, lambda e: None)
    trainer.run()
    peer_lr = trainer.method.peer_opt.param_groups[0]["lr"]
    assert peer_lr < 1e-6 * cfg.train.lr + 1e-12


# ---- specialists as in Hinton, Vinyals & Dean 2015, s.5 ------------------------------------------
def test_specialist_classes_come_from_kmeans_on_the_covariance_of_the_generalists_predictions():
    """Classes predicted together (positive covariance of the generalist's probabilities) share a
    specialist; no labels are involved."""
    from kdengine.methods.specialists import covariance_groups
    g = torch.Generator().manual_seed(0)
    n = 400
    u = torch.rand(n, generator=g)
    a = torch.zeros(n, 5)
    a[:, 0], a[:, 1] = u, 1 - u                                       # mass shared by 0 and 1
    d = torch.distributions.Dirichlet(torch.ones(3)).sample((n,))
    b = torch.zeros(n, 5)
    b[:, 2:] = d                                                      # ... and by 2, 3, 4
    probs = torch.cat([a, b])[torch.randperm(2 * n, generator=g)]
    assert covariance_groups(probs, 2, seed=0) == [[0, 1], [2, 3, 4]]
    assert covariance_groups(probs, 2, seed=5) == [[0, 1], [2, 3, 4]]


def test_specialists_default_is_the_papers_unlabelled_grouping_with_n_1():
    """setup() groups the classes without looking at the labels (shuffling them changes nothing),
    and with the paper's n = 1 a specialist is active where the generalist's top class is one of
    its classes."""
    from kdengine.methods.specialists import active_specialists
    m, data = _method("specialists", {"specialist_epochs": 1})
    clusters = m.subsets
    assert m.params.top_n == 1
    shuffled = dataclasses.replace(data, teacher_train=dataclasses.replace(
        data.teacher_train, y=data.teacher_train.y[torch.randperm(len(data.teacher_train.y),
                                                   generator=torch.Generator().manual_seed(0))]))
    again, _ = _method("specialists", {"specialist_epochs": 1}, teacher=m.teachers[0],
                       data=shuffled)
    assert again.subsets == clusters
    p = F.softmax(torch.randn(64, 10, generator=torch.Generator().manual_seed(1)) * 3, -1)
    act = active_specialists(p, clusters, m.params.top_n)
    top = p.argmax(1)
    for i in range(64):
        assert act[i].tolist() == [int(top[i]) in c for c in clusters]
