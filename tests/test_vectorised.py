"""Vectorised students: each stacked student's loss terms and gradients, computed by the method's
own loss_terms on the stack, equal the same student's alone on the same batch, and a group of cells
submitted to the engine ends with the weights and metrics each cell's run alone ends with."""
from __future__ import annotations

import pytest
import torch

from kdengine.core.checkpoints import read_run_checkpoint
from kdengine.core.config import ModelConfig, RunConfig
from kdengine.core.knobs import ConfigError
from kdengine.core.store import Store
from kdengine.data.datasets import load_data
from kdengine.experiments.sweeps import fallback_notice
from kdengine.run.stacked import StackedMLP, VmapStack, group_key, stack_students, stacked_params
from kdengine.methods import Batch, TrainContext, get_method_class
from kdengine.models.families import build_model
from kdengine.run.trainer import NonFiniteLoss, read_window

KNOBS = [  # (method, params): different T and weights per student
    ("hinton", {"T": 1.0, "soft_weight": 0.9, "hard_weight": 0.1}),
    ("hinton", {"T": 4.0, "soft_weight": 0.5, "hard_weight": 0.0}),
    ("hinton", {"T": 8.0, "soft_weight": 1.0, "hard_weight": 0.7}),
]
DKD = [("dkd", {"T": 2.0, "alpha": 1.0, "beta": 8.0, "ce_weight": 1.0, "warmup_epochs": 20.0}),
       ("dkd", {"T": 4.0, "alpha": 0.5, "beta": 2.0, "ce_weight": 0.0, "warmup_epochs": 20.0}),
       ("dkd", {"T": 6.0, "alpha": 2.0, "beta": 0.0, "ce_weight": 0.3, "warmup_epochs": 20.0})]


def _noisy(**shared):
    return [("noisy_teacher", {"sigma": s, "mse_weight": w, "hard_weight": h, "alpha": 0.5, **shared})
            for s, w, h in ((0.0, 1.0, 0.0), (0.8, 0.5, 0.2), (2.0, 1.0, 1.0))]


def _cfgs(method_params, student=ModelConfig("mlp", 2, 16)):
    out = []
    for method, params in method_params:
        cfg = RunConfig()
        cfg.student = student
        cfg.method.name, cfg.method.params = method, dict(params)
        out.append(cfg.validate())
    return out


def _batch(n=48, seed=0):
    data = load_data(RunConfig().data)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.transfer), generator=g)[:n]
    x, y = data.transfer.x[idx], data.transfer.y[idx]
    labeled = torch.rand(n, generator=g) > 0.3           # a partly labelled batch
    teacher = torch.randn(n, data.n_classes, generator=g) * 3
    return data, Batch(x, y, labeled, idx, [teacher])


def _ctx(data):
    return TrainContext(steps_per_epoch=1, epochs=1, n_classes=data.n_classes,
                        input_shape=data.input_shape, device=torch.device("cpu"))


def _weighted_terms(model, method_cls, params, data, batch, step):
    """What the trainer sums for this model: the method's own terms, weighted."""
    method = method_cls(model, [torch.nn.Identity()], params, _ctx(data))
    return method.weigh(method.loss_terms(batch, step))


def _alone(model, cfg, data, batch, step):
    """The method's own loss terms and gradients for one student on the batch."""
    cls = get_method_class(cfg.method.name)
    model.zero_grad()
    terms = _weighted_terms(model, cls, cfg.method.params, data, batch, step)
    sum(terms.values()).backward()
    return {k: v.detach() for k, v in terms.items()}, {n: p.grad.clone() for n, p in
                                                         model.named_parameters()}


def _compare(stack, models, cfgs, data, batch, step=0):
    cls = get_method_class(cfgs[0].method.name)
    terms = _weighted_terms(stack, cls, stacked_params(cls, cfgs, torch.device("cpu")), data,
                            batch, step)
    assert all(t.shape == (len(cfgs),) for t in terms.values())      # one value per student
    sum(t.sum() for t in terms.values()).backward()
    grads_v = {name: p.grad for name, p in stack.named_parameters()}
    assert grads_v and all(g is not None for g in grads_v.values())
    for i, (model, cfg) in enumerate(zip(models, cfgs)):
        alone, grads = _alone(model, cfg, data, batch, step)
        for k, v in alone.items():
            torch.testing.assert_close(terms[k][i], v, rtol=1e-5, atol=1e-6)
        for k in set(terms) - set(alone):      # a term the method leaves out must weigh nothing
            assert float(terms[k][i].detach()) == 0.0
        # the gradients, mapped back to the ordinary model's parameter names
        g_stack = _stack_grads_of(stack, i)
        assert set(g_stack) == set(grads)
        for name, g in grads.items():
            torch.testing.assert_close(g_stack[name], g, rtol=1e-4, atol=1e-6)
    return terms


def _stack_grads_of(stack, i):
    if isinstance(stack, StackedMLP):
        out = {}
        for name, w, b in zip(stack.names, stack.weights, stack.biases):
            out[f"{name}.weight"], out[f"{name}.bias"] = w.grad[i], b.grad[i, 0]
        return out
    return {k: p.grad[i] for k, p in zip(stack.keys, stack.stacked)}


def _students(cfg, data, n):
    models = []
    for s in range(n):
        torch.manual_seed(100 + s)                           # different inits per student
        models.append(build_model(cfg.student, data.input_shape, data.n_classes))
    return models


def test_batched_mlp_students_match_each_student_alone():
    data, batch = _batch()
    cfgs = _cfgs(KNOBS)
    models = _students(cfgs[0], data, len(cfgs))
    stack = stack_students(models)
    assert isinstance(stack, StackedMLP)
    terms = _compare(stack, models, cfgs, data, batch)
    assert set(terms) == {"kd", "ce"}


@pytest.mark.parametrize("method_params,step", [
    ([("logit_mse", {"mse_weight": 0.5, "hard_weight": 0.3}),
      ("logit_mse", {"mse_weight": 2.0, "hard_weight": 0.0})], 0),
    ([("ce", {}), ("ce", {})], 0),
    ([(m, {**p, "t_squared": False}) for m, p in KNOBS], 0),
    (DKD, 5),                     # warm-up at 5/20: the KD part counts a quarter
    (_noisy(), 0),
    (_noisy(noisy_student=True, mode="additive"), 0),
], ids=["logit_mse", "ce", "hinton-no-T2", "dkd", "noisy_teacher", "noisy_student-additive"])
def test_other_methods_match_alone(method_params, step):
    data, batch = _batch(seed=1)
    cfgs = _cfgs(method_params)
    models = _students(cfgs[0], data, len(cfgs))
    _compare(stack_students(models), models, cfgs, data, batch, step)


def test_noisy_teacher_students_with_sigma_zero_see_the_clean_teacher():
    data, batch = _batch(seed=3)
    cfgs = _cfgs(_noisy())
    models = _students(cfgs[0], data, len(cfgs))
    terms = _compare(stack_students(models), models, cfgs, data, batch)
    clean = ((models[0](batch.x) - batch.teacher_logits[0]) ** 2).mean()
    torch.testing.assert_close(terms["mse"][0], clean, rtol=1e-5, atol=1e-6)


def test_vmap_students_match_alone_for_a_cnn_with_batchnorm():
    data, batch = _batch(n=16, seed=2)
    cfgs = _cfgs(KNOBS[:2], student=ModelConfig("cnn", 2, 4))
    models = _students(cfgs[0], data, 2)
    stack = stack_students([m.train() for m in models])
    assert isinstance(stack, VmapStack)
    stack.train()
    _compare(stack, models, cfgs, data, batch)
    # BatchNorm running statistics were updated per student, as each student alone updated its own
    own = models[0].state_dict()
    torch.testing.assert_close(stack.state_dict_of(0)["features.0.1.running_mean"],
                               own["features.0.1.running_mean"])


def test_group_key_ignores_only_per_student_knobs(tiny_cfg):
    a = tiny_cfg.with_overrides({"method.params.T": 2.0})
    b = tiny_cfg.with_overrides({"method.params.soft_weight": 0.3})
    c = tiny_cfg.with_overrides({"train.seed": 1})
    d = tiny_cfg.with_overrides({"method.params.t_squared": False})    # shared by a stack
    assert group_key(a) == group_key(b) != group_key(c)
    assert group_key(d) != group_key(a)
    dkd = _cfgs(DKD)
    assert len({group_key(cfg) for cfg in dkd}) == 1
    assert group_key(dkd[0].with_overrides({"method.params.warmup_epochs": 5.0})) != group_key(dkd[0])
    noisy = _cfgs(_noisy())
    assert len({group_key(cfg) for cfg in noisy}) == 1
    assert group_key(noisy[0].with_overrides({"method.params.alpha": 0.3})) != group_key(noisy[0])


def test_a_window_names_the_stacked_student_whose_loss_went_bad():
    window = {"kd": [torch.tensor([1.0, 2.0]), torch.tensor([1.0, float("nan")])],
              "ce": [torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])]}
    with pytest.raises(NonFiniteLoss, match=r"'kd' of student 1 became nan at step 12"):
        read_window(window, 10, 100)
    del window["kd"][1]
    window["ce"].pop()
    got = read_window(window, 10, 100)
    assert got == [{"loss/kd": 1.0, "loss/ce": 0.5, "loss/total": 1.5},
                   {"loss/kd": 2.0, "loss/ce": 0.5, "loss/total": 2.5}]
    plain = read_window({"kd": [torch.tensor(1.0), torch.tensor(3.0)]}, 0, 10)
    assert plain == [{"loss/kd": 2.0, "loss/total": 2.0}]


def _method_cfg(tiny_cfg, method, params):
    d = tiny_cfg.to_dict()
    d["method"] = {"name": method, "params": params}
    return RunConfig.from_dict(d).validate()


@pytest.mark.parametrize("method,cells", [
    ("hinton", [{"T": 2.0, "soft_weight": 0.5}, {"T": 6.0, "soft_weight": 0.9}]),
    ("dkd", [{"T": 2.0, "alpha": 1.0, "beta": 4.0, "warmup_epochs": 1.0},
             {"T": 4.0, "alpha": 0.5, "beta": 8.0, "ce_weight": 0.2, "warmup_epochs": 1.0}]),
    ("noisy_teacher", [{"sigma": 0.5, "hard_weight": 0.3}, {"sigma": 1.5, "mse_weight": 0.5}]),
])
def test_vectorised_cells_end_where_local_runs_end(engine, tiny_cfg, method, cells):
    """The same configs through Engine.submit_group (one pass) and Engine.submit (one run each)."""
    cfgs = [_method_cfg(tiny_cfg, method, p) for p in cells]
    grouped = engine.submit_group(cfgs, owner="sweep")
    alone = [engine.submit(c, owner="solo") for c in cfgs]
    for rid in grouped + alone:
        assert engine.wait(rid, 240) == "done", engine.snapshot(rid).error
    store = engine.store
    term = {"hinton": "loss/kd", "dkd": "loss/nckd", "noisy_teacher": "loss/mse"}[method]
    for cfg, rid, solo in zip(cfgs, grouped, alone):
        mine, theirs = (read_run_checkpoint(store.checkpoint_path(r)) for r in (rid, solo))
        assert mine.config_hash == theirs.config_hash == cfg.hash
        assert (mine.epoch, mine.step) == (theirs.epoch, theirs.step)
        assert set(mine.state_dict) == set(theirs.state_dict)
        for k in mine.state_dict:
            torch.testing.assert_close(mine.state_dict[k], theirs.state_dict[k], rtol=1e-4, atol=1e-5)
        got, want = store.series(rid), store.series(solo)
        for k in (term, "loss/total", "test_acc", "val_acc", "agreement"):
            if k not in want:
                continue
            assert [p[:2] for p in got[k]] == [p[:2] for p in want[k]]      # same steps, epochs
            assert [p[2] for p in got[k]] == pytest.approx([p[2] for p in want[k]], rel=1e-4,
                                                           abs=1e-5 if k.startswith("loss") else 0.01)
        assert term in got and "test_acc" in got
        summ, solo_summ = engine.snapshot(rid).summary, engine.snapshot(solo).summary
        assert summ["stacked"] == 2 and "stacked" not in solo_summ
        assert summ["final_test_acc"] == pytest.approx(solo_summ["final_test_acc"], abs=0.01)
        assert summ["student_params"] == solo_summ["student_params"]


def test_a_method_that_cannot_stack_is_refused_and_named(engine, tiny_cfg):
    cfgs = [_method_cfg(tiny_cfg, "sobolev", {}), _method_cfg(tiny_cfg, "hinton", {"T": 3.0})]
    assert not get_method_class("sobolev").supports_stacking
    note = fallback_notice(cfgs)
    assert note.startswith("1 of 2 cells run on the local backend") and "sobolev" in note
    assert fallback_notice(cfgs[1:]) == ""
    with pytest.raises(ConfigError, match="sobolev trains one student at a time") as e:
        engine.submit_group([cfgs[0], cfgs[0].with_overrides({"method.params.value_weight": 0.5})])
    assert e.value.field == "method.name"
    assert engine.store.list_runs() == []


def test_a_vectorised_sweep_trains_what_cannot_stack_locally_and_says_so(runs_dir, tiny_cfg,
                                                                          capsys):
    """In the CLI's output, in the stored sweep and on the Sweeps page."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from kdengine.cli import main
    from kdengine.experiments.sweeps import stored_cells
    cfg = _method_cfg(tiny_cfg, "sobolev", {}).with_overrides({"train.epochs": 1})
    path = runs_dir / "sobolev.yaml"
    path.write_text(cfg.to_yaml())
    code = main(["sweep", "--config", str(path), "--axis", "method.params.value_weight=0.5,1",
                 "--backend", "vectorised"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "note: 2 of 2 cells run on the local backend" in out and "sobolev" in out
    assert out.count("done") == 2
    store = Store()
    sweep_id = out.split()[1].rstrip(":")            # "sweep <id>: 2 cells on the ..."
    state = store.get_sweep(sweep_id)["state"]
    assert state["notices"] == [out.split("note: ")[1].splitlines()[0]]   # the page shows these
    assert {c["backend"] for c in state["cells"]} == {"local"}
    assert {r["status"] for r in stored_cells(store, sweep_id)} == {"done"}
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app_pages" / "sweeps.py"),
                           default_timeout=120)
    at.session_state["sweep_id"] = sweep_id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [w.value for w in at.warning if "local backend" in w.value] == state["notices"]
