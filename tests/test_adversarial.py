"""BSS boundary search, MagSim/AngSim, the grid evaluator, the bss method and the trainer's hook."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdengine.core.events import Metrics, Artifacts
from kdengine.analysis import boundaries as adv
from kdengine.cli import load_config
from kdengine.data.datasets import load_data
from kdengine import Engine, Store
from kdengine.methods import TrainContext
from kdengine.methods.bss import BSS, BSSParams
from kdengine.teachers.sources import get_teacher
from kdengine.run.engine import train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def moons():
    """The moons-bss preset's data and its (cached) teacher, trained once for the module."""
    cfg = load_config("moons-bss", [])
    data = load_data(cfg.data)
    teacher, info = get_teacher(cfg, data, CPU)
    assert info["test_acc"] > 0.85
    return cfg, data, teacher


def _teacher_correct(teacher, x, y):
    with torch.no_grad():
        logits = teacher(x)
    ok = logits.argmax(1) == y
    return x[ok], y[ok], logits[ok]


def _linear(w: torch.Tensor, b: torch.Tensor) -> nn.Module:
    m = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
    return m.requires_grad_(False)


# ---- the attack -------------------------------------------------------------------------------
def test_margin_shrinks_monotonically_and_samples_end_at_the_flip(moons):
    _, data, teacher = moons
    x, base, logits = _teacher_correct(teacher, data.transfer.x[:300], data.transfer.y[:300])
    target = adv.runner_up(logits, base)
    res = adv.boundary_attack(teacher, x, base, target, step=0.3, steps=40, eps=1e-4)
    S1, B = res.margins.shape
    assert S1 == 41 and res.traj.shape == (41, B, 2)
    # the recorded margins are the teacher's margins at the recorded points
    with torch.no_grad():
        again = adv._margin(teacher(res.traj.reshape(-1, 2)), base.repeat(S1), target.repeat(S1))
    assert torch.allclose(again.reshape(S1, B), res.margins, atol=1e-4)
    diffs = res.margins[1:] - res.margins[:-1]
    moved = (res.traj[1:] - res.traj[:-1]).norm(dim=2) > 0
    assert moved.any(0).all(), "every base sample moves"
    assert (diffs[moved] < 0).all(), "each move shrinks the margin"
    assert (diffs[~moved] == 0).all()
    assert res.margins[0].min() > 0
    # most samples cross, and end just past the boundary
    assert res.flipped.float().mean() >= 0.8
    m0, m_end = res.margins[0], res.margins[-1]
    near = res.flipped & (m_end.abs() <= 0.02 * m0)
    assert near.float().mean() >= 0.8
    # the boundary lies on the last segment; that segment is short against the whole path
    steps = (res.traj[1:] - res.traj[:-1]).norm(dim=2)
    last = steps.gather(0, (res.steps_taken - 1).clamp_min(0)[None])[0]
    path = steps.sum(0)
    assert (last[near] <= 0.1 * path[near]).float().mean() >= 0.9
    assert torch.equal(res.x_adv, res.traj[-1])
    assert (res.logits_after.argmax(1)[res.flipped] != base[res.flipped]).all()


def test_batched_attack_equals_one_sample_at_a_time(moons):
    _, data, teacher = moons
    x, base, logits = _teacher_correct(teacher, data.transfer.x[:12], data.transfer.y[:12])
    target = adv.runner_up(logits, base)
    batch = adv.boundary_attack(teacher, x, base, target, steps=8)
    for i in range(len(x)):
        one = adv.boundary_attack(teacher, x[i:i + 1], base[i:i + 1], target[i:i + 1], steps=8)
        assert torch.allclose(one.traj[:, 0], batch.traj[:, i], atol=1e-5)
        assert one.steps_taken.item() == batch.steps_taken[i].item()


@pytest.mark.parametrize("rule,power", [("deepfool", 2), ("authors", 1)])
def test_one_step_follows_the_update_rule_on_a_linear_model(rule, power):
    torch.manual_seed(0)
    w, b = torch.randn(3, 5), torch.randn(3)
    model = _linear(w, b)
    x = torch.randn(6, 5)
    base = model(x).argmax(1)
    target = (base + 1) % 3
    eta, eps = 0.3, 1e-2
    res = adv.boundary_attack(model, x, base, target, step=eta, steps=1, eps=eps, rule=rule,
                              safeguard=False)
    g = w[base] - w[target]                                  # d(z_b - z_k)/dx, constant
    m = (x * g).sum(1) + b[base] - b[target]
    expect = x - (eta * (m + eps) / g.norm(dim=1) ** power)[:, None] * g
    assert torch.allclose(res.traj[1], expect, atol=1e-5)
    if rule == "deepfool":  # linear model: m_1 + eps = (1 - eta)(m_0 + eps)
        assert torch.allclose(res.margins[1] + eps, (1 - eta) * (m + eps), atol=1e-4)


def test_full_deepfool_step_lands_eps_past_a_linear_boundary():
    torch.manual_seed(1)
    model = _linear(torch.randn(2, 4), torch.randn(2))
    x = torch.randn(32, 4)
    base = model(x).argmax(1)
    res = adv.boundary_attack(model, x, base, 1 - base, step=1.0, steps=3, eps=1e-3)
    assert res.flipped.all() and (res.steps_taken == 1).all()
    assert torch.allclose(res.margins[-1], torch.full((32,), -1e-3), atol=1e-4)


def test_authors_rule_is_the_official_code_without_the_safeguard():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3)).requires_grad_(False)
    x = torch.randn(64, 2)
    base = net(x).argmax(1)
    target = adv.runner_up(net(x), base)
    for rule, guard in (("authors", False), ("deepfool", True)):
        by_default = adv.boundary_attack(net, x, base, target, step=0.3, steps=10, rule=rule)
        explicit = adv.boundary_attack(net, x, base, target, step=0.3, steps=10, rule=rule,
                                       safeguard=guard)
        assert torch.equal(by_default.traj, explicit.traj)
    # and the difference matters: the safeguard holds back some of the authors' moves
    free = adv.boundary_attack(net, x, base, target, step=0.3, steps=10, rule="authors")
    held = adv.boundary_attack(net, x, base, target, step=0.3, steps=10, rule="authors",
                               safeguard=True)
    assert not torch.equal(free.traj, held.traj)


def test_frozen_samples_and_clamp():
    model = _linear(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.zeros(2))
    x = torch.tensor([[0.5, 0.0], [-0.5, 0.0]])
    base = torch.tensor([0, 0])           # the second sample is already on the other side
    res = adv.boundary_attack(model, x, base, torch.tensor([1, 1]), step=2.0, steps=3,
                              clamp=(-0.25, 0.25), safeguard=False)
    assert res.steps_taken.tolist()[1] == 0 and torch.equal(res.x_adv[1], x[1])
    assert res.traj.abs().max() <= 0.5 and res.traj[1:, 0].abs().max() <= 0.25


def test_targets_and_base_selection():
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([[5.0, 4.0, -9.0], [0.0, 3.0, 2.0]]).repeat(200, 1)
    base = t.argmax(1)
    k = adv.sample_targets(t, base, g)
    assert (k != base).all()
    # proportional to the teacher's softmax over the non-base classes: class 1 dominates row 0
    assert (k[0::2] == 1).float().mean() > 0.99
    frac2 = (k[1::2] == 2).float().mean().item()
    assert 0.78 < frac2 < 0.97     # p(2) / (p(0) + p(2)) = e^2 / (1 + e^2) = 0.881, sd 0.023
    binary = adv.sample_targets(torch.randn(50, 2), torch.zeros(50, dtype=torch.long), g)
    assert (binary == 1).all()
    assert torch.equal(adv.runner_up(t[:2], base[:2]), torch.tensor([1, 2]))

    t_logits = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    s_logits = torch.tensor([[3.0, 0.0], [-3.0, 3.0], [0.0, 3.0], [0.0, 0.0]])
    y = torch.tensor([0, 0, 0, 0])             # the teacher is wrong on sample 2
    lab = torch.tensor([True, True, True, True])
    idx = adv.select_base(t_logits, s_logits, y, lab, k=10, rule="teacher_correct")
    assert idx.tolist() == [1, 3, 0]            # largest disagreement first, sample 2 excluded
    assert adv.select_base(t_logits, s_logits, y, lab, k=2, rule="teacher_correct").tolist() == [1, 3]
    unl = adv.select_base(t_logits, s_logits, y, torch.zeros(4, dtype=torch.bool), k=10,
                          rule="teacher_correct")
    assert sorted(unl.tolist()) == [0, 1, 2, 3]  # without labels the teacher's class is the base
    # the default: the student must be right too, so sample 1 (the student says 1) goes
    assert adv.select_base(t_logits, s_logits, y, lab, k=10).tolist() == [3, 0]


# ---- MagSim / AngSim --------------------------------------------------------------------------
def test_boundary_similarity_values():
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    same = adv.boundary_similarity(v, v)
    assert same["magsim"] == pytest.approx(1.0) and same["angsim"] == pytest.approx(1.0)
    half = adv.boundary_similarity(v, 2 * v)
    assert half["magsim"] == pytest.approx(0.5) and half["angsim"] == pytest.approx(1.0)
    rot = adv.boundary_similarity(v[:2], torch.tensor([[0.0, 1.0], [-2.0, 0.0]]))
    assert rot["magsim"] == pytest.approx(1.0) and rot["angsim"] == pytest.approx(0.0, abs=1e-6)
    opp = adv.boundary_similarity(v, -v)
    assert opp["angsim"] == 0.0
    cos45 = adv.boundary_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    assert cos45["angsim"] == pytest.approx(math.sqrt(0.5))
    assert cos45["magsim"] == pytest.approx(1 / math.sqrt(2))
    part = adv.boundary_similarity(v, 2 * v, torch.tensor([True, False, False]))
    assert part["probe_valid"] == pytest.approx(1 / 3)
    assert math.isnan(adv.boundary_similarity(v, v, torch.zeros(3, dtype=torch.bool))["magsim"])


def test_probe_of_the_teacher_against_itself_is_one_and_a_fresh_student_is_less(moons):
    _, data, teacher = moons
    probe = adv.SimilarityProbe(teacher, data.test.x, data.test.y, CPU, size=64)
    assert 0 < len(probe) <= 64
    me = probe.measure(teacher)
    assert me["magsim"] == pytest.approx(1.0) and me["angsim"] == pytest.approx(1.0)
    torch.manual_seed(0)
    stranger = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    other = probe.measure(stranger)
    assert other["magsim"] < 0.999 or other["angsim"] < 0.999 or other["probe_valid"] < 1


# ---- grids ------------------------------------------------------------------------------------
def test_grid_eval_equals_a_per_point_loop():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3)) for _ in range(2)]
    bounds = [-1.5, 2.0, -0.5, 1.25]
    n = 13
    grids = adv.grid_eval(models, bounds, n=n)
    assert isinstance(grids, list) and grids[0].shape == (n, n, 3)
    xs, ys = np.linspace(-1.5, 2.0, n), np.linspace(-0.5, 1.25, n)
    for m, grid in zip(models, grids):
        for i in range(n):
            for j in range(n):
                with torch.no_grad():
                    p = torch.softmax(m(torch.tensor([[xs[j], ys[i]]], dtype=torch.float32)), 1)
                assert np.allclose(grid[i, j], p[0].numpy(), atol=1e-5)
    assert np.allclose(adv.grid_eval(models[0], bounds, n=n), grids[0])
    q = adv.quantise(grids[0])
    assert np.abs(adv.dequantise(q) - grids[0]).max() <= 0.005 + 1e-6


def test_grid_bounds_cover_the_points():
    pts = np.array([[0.0, -1.0], [2.0, 3.0]])
    x0, x1, y0, y1 = adv.grid_bounds(pts, pad=0.1)
    assert (x0, x1) == pytest.approx((-0.2, 2.2)) and (y0, y1) == pytest.approx((-1.4, 3.4))


# ---- the method -------------------------------------------------------------------------------
def test_bss_weight_schedule_matches_the_authors():
    student = nn.Linear(2, 2)
    ctx = TrainContext(steps_per_epoch=10, epochs=80, n_classes=2, input_shape=(2,), device=CPU)
    m = BSS(student, [nn.Linear(2, 2)], BSSParams(), ctx)
    for step in (0, 5, 200, 399, 590, 600, 601, 799, 800):
        e = step / 800                      # the authors' epoch / max_epoch, per step here
        w_kd, w_bss = m.weights(step)
        assert w_kd == pytest.approx(max(3 * (1 - e), 0) + 1)
        assert w_bss == pytest.approx(max(2 * (1 - 4 / 3 * e), 0))
    assert m.weights(0) == (4.0, 2.0) and m.weights(800) == (1.0, 0.0)


def test_bss_terms_and_boundary_samples_on_moons(moons):
    cfg, data, teacher = moons
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    ctx = TrainContext(steps_per_epoch=10, epochs=4, n_classes=2, input_shape=(2,), device=CPU,
                       data_kind="2d")
    m = BSS(student, [teacher], BSSParams(attack_size=16, probe_size=32), ctx)
    m.setup(data)
    from kdengine.methods import Batch
    x, y = data.transfer.x[:64], data.transfer.y[:64]
    batch = Batch(x, y, torch.ones(64, dtype=torch.bool), torch.arange(64))
    before = [None if p.grad is None else p.grad.clone() for p in teacher.parameters()]
    terms = m.loss_terms(batch, step=0)
    assert set(terms) == {"ce", "kd", "bss"} and terms["bss"] > 0
    sum(terms.values()).backward()
    assert student[0].weight.grad is not None
    for p, g in zip(teacher.parameters(), before):     # the attack never trains the teacher
        assert not p.requires_grad
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    art = m.artifacts()["bss"]
    assert len(art["traj"]) == len(art["base"]) <= 16
    assert len(art["traj"][0]) == BSSParams().attack_steps + 1
    assert all(b != k for b, k in zip(art["base"], art["target"]))
    # late in training the BSS weight is 0 and the term is an exact zero
    assert m.loss_terms(batch, step=39)["bss"].item() == 0.0
    em = m.epoch_metrics(0)
    assert 0 <= em["magsim"] <= 1 and 0 <= em["angsim"] <= 1


# ---- runs end to end --------------------------------------------------------------------------
def test_moons_bss_run_through_the_engine_records_magsim_angsim_and_snapshots(moons):
    cfg = load_config("moons-bss", ["train.epochs=4", "method.params.attack_size=16"])
    eng = Engine(store=Store(), max_workers=1)
    try:
        rid = eng.submit(cfg, owner="t")
        assert eng.wait(rid, timeout=240) == "done", eng.snapshot(rid).error
        snap = eng.snapshot(rid)
        for k in ("magsim", "angsim"):
            vals = [v for _, _, v in snap.series[k]]
            assert len(vals) == 4 and all(0 <= v <= 1 for v in vals)
        assert "loss/bss" in snap.series
        assert {"bss", "grid_student", "grid_teacher"} <= set(snap.artifacts)
        grids = eng.store.artifacts(rid, "grid_student")
        assert [g["epoch"] for _, g in grids] == [1, 2, 3, 4]
        g = grids[-1][1]
        assert np.asarray(g["probs"]).shape == (g["n"], g["n"], 2) and len(g["bounds"]) == 4
        assert len(eng.store.artifacts(rid, "grid_teacher")) == 1
        stored = eng.store.series(rid)
        assert [v for _, _, v in stored["magsim"]] == [v for _, _, v in snap.series["magsim"]]
    finally:
        eng.shutdown()


def test_every_2d_run_gets_grids_and_hinton_gets_similarity(moons):
    arts, metrics = [], {}

    def emit(e):
        if isinstance(e, Artifacts):
            arts.append(e.data)
        elif isinstance(e, Metrics):
            metrics.update(e.values)
    train(load_config("moons-2d", ["train.epochs=2"]), emit)
    assert [("grid_student" in a, "grid_teacher" in a) for a in arts] == [(True, True), (True, False)]
    assert 0 <= metrics["magsim"] <= 1 and 0 <= metrics["angsim"] <= 1
    arts.clear()
    train(load_config("moons-2d", ["train.epochs=1"]).with_overrides(
        {"method.name": "ce", "method.params": {}}), emit)
    assert list(arts[0]) == ["grid_student"]     # no teacher in a student-alone run


def test_bss_on_digits_gives_a_gallery(runs_dir):
    cfg = load_config("digits-quick", ["train.epochs=1", "teacher.epochs=3"]).with_overrides(
        {"method.name": "bss", "method.params": {}})
    arts = {}
    train(cfg, lambda e: arts.update(e.data) if isinstance(e, Artifacts) else None)
    g = arts["bss"]
    assert g["kind"] == "image" and g["shape"] == [1, 8, 8]
    assert 0 < len(g["x_base"]) <= 8 and len(g["x_bss"]) == len(g["x_base"])
    assert g["class_names"][g["base"][0]] in [str(i) for i in range(10)]
    assert np.asarray(g["x_base"]).min() >= -0.01 and np.asarray(g["x_base"]).max() <= 1.01
    assert not np.allclose(g["x_base"], g["x_bss"])
    assert len(g["t_before"][0]) == 10 and len(g["s_after"]) == len(g["base"])
    assert "grid_student" not in arts


# ---- paper-faithful base samples and attack settings (the authors' final training code) --------
def _bss_on_a_line(params: BSSParams):
    """BSS with a linear teacher that is right on every sample and a student that always says
    class 0: on this batch the student is right exactly on the teacher's class-0 samples."""
    from types import SimpleNamespace
    from kdengine.methods import Batch
    teacher = _linear(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.zeros(2))
    student = _linear(torch.zeros(2, 2), torch.tensor([1.0, 0.0])).requires_grad_(True)
    ctx = TrainContext(steps_per_epoch=10, epochs=4, n_classes=2, input_shape=(2,), device=CPU,
                       data_kind="2d")
    m = BSS(student, [teacher], params, ctx)
    m.setup(SimpleNamespace(kind="2d", class_names=["a", "b"], mean=None, std=None))
    x = torch.linspace(-2, 2, 32)[:, None] * torch.tensor([[1.0, 0.0]]) + torch.tensor([[0.0, 0.3]])
    x = x[x[:, 0].abs() > 0.1]
    y = (x[:, 0] < 0).long()                 # the teacher's class: 0 on the right, 1 on the left
    return m, Batch(x, y, torch.ones(len(x), dtype=torch.bool), torch.arange(len(x)))


def test_bss_attacks_only_samples_the_teacher_and_the_student_both_get_right():
    """The authors' final train_BSS_distillation.py attacks a sample only when the teacher AND the
    student classify it correctly (condition1 & condition2); the earlier rule (teacher alone) is
    an option."""
    m, batch = _bss_on_a_line(BSSParams(probe_size=0))
    m.loss_terms(batch, step=0)
    res = m._last["res"]
    assert len(res.base) == int((batch.y == 0).sum())          # every sample both models get right
    assert (res.base == 0).all() and (m._last["s_before"].argmax(1) == 0).all()
    old, batch = _bss_on_a_line(BSSParams(probe_size=0, base_samples="teacher_correct"))
    old.loss_terms(batch, step=0)
    assert (old._last["res"].base == 1).any()                  # the teacher alone decides there
    # without labels the student must agree with the teacher's class
    t, s = torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    unl = torch.zeros(2, dtype=torch.bool)
    assert adv.select_base(t, s, torch.tensor([-1, -1]), unl, 10).tolist() == [0]


@pytest.mark.parametrize("rule,step,eps", [("authors", 0.3, 1e-4), ("deepfool", 1.0, 0.02)])
def test_each_attack_rule_brings_its_own_step_and_eps(rule, step, eps):
    """Choosing the authors' rule gives their eta 0.3 and eps 1e-4 without setting them; the
    deepfool rule keeps 1 and 0.02; a value set by hand wins."""
    m, batch = _bss_on_a_line(BSSParams(probe_size=0, attack_rule=rule, attack_steps=1))
    m.loss_terms(batch, step=0)
    res = m._last["res"]
    x0 = res.traj[0]
    # on this linear teacher: m = z_b - z_k = +-2 x_0, g = +-(2, 0); one step of the rule
    margin = res.margins[0]
    g = torch.where(res.base[:, None] == 0, torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0]))
    norm = g.norm(dim=1) ** (2 if rule == "deepfool" else 1)
    want = x0 - (step * (margin + eps) / norm)[:, None] * g
    torch.testing.assert_close(res.traj[1], want, rtol=0, atol=1e-6)
    hand, batch = _bss_on_a_line(BSSParams(probe_size=0, attack_rule=rule, attack_steps=1,
                                           attack_step=0.5, attack_eps=0.0))
    hand.loss_terms(batch, step=0)
    r2 = hand._last["res"]
    want2 = r2.traj[0] - (0.5 * r2.margins[0] / norm)[:, None] * g
    torch.testing.assert_close(r2.traj[1], want2, rtol=0, atol=1e-6)


def test_the_similarity_note_states_the_probe_it_measures_with_and_the_papers_measure():
    """What the Boundaries page says about MagSim / AngSim comes from the probe's own settings, so
    the words cannot drift from the code; it names how the probe differs from training's attack."""
    note = adv.similarity_note()
    p = adv.PROBE_ATTACK
    assert f"{p['steps']} steps" in note and f"{p['step']:g}" in note
    assert "Heo" in note and "second most likely" in note
    for word in ("training", "paper", "distance", "direction"):
        assert word in note
    assert "`" not in note and "." in note              # plain words: no code or config keys
