"""Vectorised students: each stacked student's loss and gradients equal the same student trained
alone on the same batch, and a vectorised cell ends with the weights a local run of it ends with."""
from __future__ import annotations

import pytest
import torch

from kdengine.core.config import ModelConfig, RunConfig
from kdengine.data.datasets import load_data
from kdengine.methods import Batch, TrainContext, get_method_class
from kdengine.models.families import build_model
from kdengine.core.store import Store
from kdengine.core.checkpoints import safe_load
from kdengine.run.trainer import Trainer
from kdengine.experiments.vectorised import (Knobs, StackedMLP, VmapStack, create_runs, group_key, stack_students,
                                 stacked_terms, train_group)

KNOBS = [  # (method, params): different T, weights and the T^2 switch per student
    ("hinton", {"T": 1.0, "soft_weight": 0.9, "hard_weight": 0.1, "t_squared": True}),
    ("hinton", {"T": 4.0, "soft_weight": 0.5, "hard_weight": 0.0, "t_squared": True}),
    ("hinton", {"T": 8.0, "soft_weight": 1.0, "hard_weight": 0.7, "t_squared": False}),
]


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


def _alone(model, cfg, data, batch):
    """The method's own loss terms and gradients for one student on the batch."""
    cls = get_method_class(cfg.method.name)
    ctx = TrainContext(steps_per_epoch=1, epochs=1, n_classes=data.n_classes,
                       input_shape=data.input_shape, device=torch.device("cpu"))
    method = cls(model, [torch.nn.Identity()], cfg.method.params, ctx)
    model.zero_grad()
    terms = method.weigh(method.loss_terms(batch, 0))     # weighted, as the trainer sums them
    sum(terms.values()).backward()
    return {k: v.detach() for k, v in terms.items()}, {n: p.grad.clone() for n, p in
                                                         model.named_parameters()}


def _compare(stack, models, cfgs, data, batch):
    logits = stack(batch.x)
    terms = stacked_terms(logits, batch.teacher_logits[0], batch.y, batch.labeled,
                          Knobs.from_configs(cfgs, torch.device("cpu")))
    sum(t.sum() for t in terms.values()).backward()
    grads_v = {name: p.grad for name, p in stack.named_parameters()}
    assert grads_v and all(g is not None for g in grads_v.values())
    for i, (model, cfg) in enumerate(zip(models, cfgs)):
        alone, grads = _alone(model, cfg, data, batch)
        for k, v in alone.items():
            torch.testing.assert_close(terms[k][i], v, rtol=1e-5, atol=1e-6)
        for k in set(terms) - set(alone):      # a term the method leaves out must weigh nothing
            assert float(terms[k][i].detach()) == 0.0
        # the gradients, mapped back to the ordinary model's parameter names
        g_stack = _stack_grads_of(stack, i)
        assert set(g_stack) == set(grads)
        for name, g in grads.items():
            torch.testing.assert_close(g_stack[name], g, rtol=1e-4, atol=1e-6)


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
    _compare(stack, models, cfgs, data, batch)


@pytest.mark.parametrize("method,params", [("logit_mse", {"mse_weight": 0.5, "hard_weight": 0.3}),
                                           ("ce", {})])
def test_other_methods_match_alone(method, params):
    data, batch = _batch(seed=1)
    cfgs = _cfgs([(method, params), (method, params)])
    models = _students(cfgs[0], data, 2)
    _compare(stack_students(models), models, cfgs, data, batch)


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


def test_group_key_ignores_only_method_knobs(tiny_cfg):
    a = tiny_cfg.with_overrides({"method.params.T": 2.0})
    b = tiny_cfg.with_overrides({"method.params.soft_weight": 0.3})
    c = tiny_cfg.with_overrides({"train.seed": 1})
    assert group_key(a) == group_key(b) != group_key(c)


def test_vectorised_cells_end_where_local_runs_end(runs_dir, tiny_cfg):
    cfgs = [tiny_cfg.with_overrides({"method.params.T": T, "method.params.soft_weight": w})
            for T, w in ((2.0, 0.5), (6.0, 0.9))]
    store = Store()
    rids = create_runs(cfgs, store)
    summaries = train_group(cfgs, rids, store)
    for cfg, rid, summ in zip(cfgs, rids, summaries):
        row = store.get_run(rid)
        assert row["status"] == "done" and row["config_hash"] == cfg.hash
        assert "test_acc" in store.series(rid) and "loss/kd" in store.series(rid)
        path = runs_dir / f"alone-{rid}.pt"
        alone = Trainer(cfg, checkpoint_path=path).run()
        mine, theirs = safe_load(store.checkpoint_path(rid))["state_dict"], safe_load(path)["state_dict"]
        assert set(mine) == set(theirs)
        for k in mine:
            torch.testing.assert_close(mine[k], theirs[k], rtol=1e-4, atol=1e-5)
        assert summ["final_test_acc"] == pytest.approx(alone["final_test_acc"], abs=0.01)
