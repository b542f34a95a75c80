"""Distillation from several teachers (an ensemble as the teacher: Hinton et al. 2015,
arXiv:1503.02531; You, Xu, Xu, Tao 2017, "Learning from Multiple Teacher Networks", KDD).

The run's teacher plus the extra teachers chosen in ``teachers`` (each "arch-depth-width", trained
now through the same cached ``get_teacher`` as the main one) are combined per sample into one soft
target at temperature T, which the student matches with ``T^2 * KL(target || p_s)``:

* ``avg_probs``: the mean of the teachers' softened distributions (an ensemble's prediction);
* ``avg_logits``: the softmax of the mean logits;
* ``confidence``: a per-sample weighted mean of the distributions, each teacher weighted by its
  confidence (its top probability at T = 1) on that sample.

With one teacher all three are exactly that teacher's Hinton KD.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdengine.losses.logits import kd_loss, kl_div
from kdengine.core.knobs import ConfigError, param, temperature_knob, weight_knob
from kdengine.methods.base import Method, register

TEACHER_CHOICES = ("mlp-1-64", "mlp-1-128", "mlp-2-128", "mlp-2-256", "mlp-3-256", "mlp-2-512",
                   "cnn-2-16", "cnn-3-32", "resnet-8-16", "resnet-20-16")


@dataclass
class MultiTeacherParams:
    teachers: list[str] = param(default_factory=lambda: ["mlp-1-128", "mlp-3-256"],
                                choices=TEACHER_CHOICES, label="extra teachers",
                                help="Teachers besides the run's own, as arch-depth-width; each is "
                                     "trained now (and cached) on the teacher's data.")
    aggregation: str = param("avg_probs", choices=("avg_probs", "avg_logits", "confidence"),
                             help="How the teachers' outputs become one target.")
    T: float = temperature_knob(4.0)
    soft_weight: float = weight_knob(0.9, "soft weight")
    hard_weight: float = weight_knob(0.1, "hard weight")


def parse_spec(spec: str):
    from kdengine.core.config import ModelConfig
    arch, depth, width = spec.split("-")
    return ModelConfig(arch=arch, depth=int(depth), width=int(width))


def aggregate_log_target(teacher_logits: list[Tensor], T: float, how: str) -> Tensor:
    """Log of the combined soft target at temperature T, per sample: (batch, classes)."""
    ts = [t.detach().float() for t in teacher_logits]
    if how == "avg_logits" or len(ts) == 1:
        return F.log_softmax(torch.stack(ts).mean(0) / T, dim=-1)
    logp = torch.stack([F.log_softmax(t / T, dim=-1) for t in ts])           # (n, B, C)
    if how == "avg_probs":
        logw = torch.full(logp.shape[:2], -math.log(len(ts)), device=logp.device)
    elif how == "confidence":
        conf = torch.stack([F.softmax(t, dim=-1).amax(-1) for t in ts])      # (n, B)
        logw = (conf / conf.sum(0, keepdim=True)).log()
    else:
        raise ValueError(f"unknown aggregation {how!r}")
    return torch.logsumexp(logw.unsqueeze(-1) + logp, dim=0)


def multi_kd_loss(student_logits: Tensor, teacher_logits: list[Tensor], T: float, how: str) -> Tensor:
    """T^2 * KL(aggregated target || softmax(s/T)), batch mean."""
    if len(teacher_logits) == 1:
        return kd_loss(student_logits, teacher_logits[0], T)
    log_target = aggregate_log_target(teacher_logits, T, how)
    return kl_div(log_target, F.log_softmax(student_logits / T, dim=-1)).mean() * (T * T)


@register
class MultiTeacher(Method):
    name = "multi_teacher"
    Params = MultiTeacherParams
    title = "Several teachers (averaged or confidence-weighted)"
    paper = "Hinton et al. 2015; You et al. 2017 (KDD)"
    formula = (r"w_{hard}\,CE(y, s) + "
               r"w_{soft}\,T^2\,KL\big(\bar p_T\,\|\,\sigma(s/T)\big),\quad \bar p_T = \tfrac{1}{M}\textstyle\sum_m \sigma(t_m/T)")
    weight_knobs = {"kd": "soft_weight", "ce": "hard_weight"}
    temperature = "T"
    lint_probe = "no_setup"      # setup trains teachers: the lint probe checks the main one only

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        self.ensemble_acc: float | None = None

    def setup(self, data):
        from kdengine.teachers.sources import get_teacher
        cfg, ctx = self.ctx.config, self.ctx
        if self.params.teachers and cfg is None:
            raise RuntimeError("extra teachers need the run's config (ctx.config)")
        for i, spec in enumerate(self.params.teachers):
            sub = cfg.copy()
            sub.teacher.source = "train"
            sub.teacher.model = parse_spec(spec)
            if sub.teacher.model.arch != "mlp" and data.kind != "image":
                raise ConfigError("method.params.teachers", f"teacher {spec} needs image data")
            msg = f"extra teacher {i + 1}/{len(self.params.teachers)} ({spec})"
            model, info = get_teacher(
                sub, data, self.ctx.device,
                progress=lambda f, m, msg=msg: ctx.phase("teacher", f"training {msg}: {m}", f),
                should_stop=ctx.should_stop)
            model.zero_grad(set_to_none=True)   # a teacher trained just now keeps its last grads
            model.eval().requires_grad_(False)
            self.teachers.append(model)
            ctx.notice(f"Extra teacher {info['label']} "
                       f"({'cached' if info['cached'] else 'trained now'})"
                       f": test accuracy {info['test_acc']:.2%}")
        self.ensemble_acc = self._ensemble_accuracy(data)
        ctx.notice(f"Teacher ensemble ({len(self.teachers)} teachers, "
                   f"{self.params.aggregation}): test accuracy {self.ensemble_acc:.2%}")

    @torch.no_grad()
    def _ensemble_accuracy(self, data) -> float:
        x, y = data.test.x.to(self.ctx.device), data.test.y.to(self.ctx.device)
        logits = [self.run_teacher(t, x) for t in self.teachers]
        pred = aggregate_log_target(logits, self.params.T, self.params.aggregation).argmax(-1)
        return (pred == y).float().mean().item()

    def teacher_logits(self, batch, i=0):
        # Cached logits cover the teachers the trainer knew of; run the others directly.
        if batch.teacher_logits is not None and i < len(batch.teacher_logits):
            return batch.teacher_logits[i]
        return self.run_teacher(self.teachers[i], batch.x)

    def loss_terms(self, batch, step):
        p = self.params
        s = self.student(batch.x)
        ts = [self.teacher_logits(batch, i) for i in range(len(self.teachers))]
        terms = {"kd": multi_kd_loss(s, ts, p.T, p.aggregation)}
        return self.with_hard_ce(terms, s, batch)

    def epoch_metrics(self, epoch):
        return {} if self.ensemble_acc is None else {"ensemble_test_acc": self.ensemble_acc}
