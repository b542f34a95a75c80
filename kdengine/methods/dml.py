"""Deep mutual learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018, arXiv:1706.00384), and online KD.

``cohort`` mode: the student and ``cohort_size - 1`` peers of the same architecture start from
different random weights and train together, no pre-trained teacher: each minimises
``CE(y, z_i) + kl_weight * T^2 * mean_{j != i} KL(p_j || p_i)``, with the peers' distributions as
fixed targets in each term (the paper alternates updates; here one step updates every model at once
from the same batch, the common simplification). ``online`` mode: the single peer has the teacher's
architecture (``teacher.model`` in the run's config) and is trained together with the student:
"teacher and student trained at once".

Terms: ``ce`` and ``kl`` are the student's; ``peer_ce`` and ``peer_kl`` sum over the peers. The
peers' mean test accuracy is recorded each epoch as ``peer_test_acc``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdengine.losses.logits import kd_loss, kd_loss_unscaled
from kdengine.core.knobs import param, temperature_knob, weight_knob
from kdengine.methods.base import Method, register


@dataclass
class DMLParams:
    mode: str = param("cohort", choices=("cohort", "online"),
                      help="cohort: students of the student's architecture learn from each other; "
                           "online: a model of the teacher's architecture trains alongside the "
                           "student (teacher and student at once).")
    cohort_size: int = param(2, min=2, max=8, label="cohort size",
                             help="Models in the cohort, the student included (cohort mode).")
    kl_weight: float = weight_knob(1.0, "mimicry (KL) weight", step=0.1)
    T: float = temperature_knob(1.0, help="Temperature of the mutual KL (the paper uses 1).")
    hard_weight: float = weight_knob(1.0, "hard weight")
    t_squared: bool = param(True, label="multiply KL by T²")


@register
class DeepMutualLearning(Method):
    name = "dml"
    Params = DMLParams
    title = "Deep mutual learning / online KD (students learn together)"
    paper = "Zhang et al. 2018, arXiv:1706.00384"
    needs_teacher = False
    weight_knobs = {"ce": "hard_weight", "peer_ce": "hard_weight", "kl": "kl_weight",
                    "peer_kl": "kl_weight"}
    label_terms = ("ce", "peer_ce")
    temperature = "T"
    lint_probe = "full"

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        self.peers = nn.ModuleList()
        self.data = None

    def setup(self, data):
        from kdengine.models.families import build_model
        cfg = self.ctx.config
        if cfg is None:
            raise RuntimeError("dml builds its peers from the run's config (ctx.config)")
        p = self.params
        specs = [cfg.teacher.model] if p.mode == "online" else [cfg.student] * (p.cohort_size - 1)
        # Peers draw from a generator of their own so the student's initialisation (made by the
        # trainer before setup) is the same as in any other method under the same seed.
        state = torch.get_rng_state()
        torch.manual_seed(cfg.train.seed + 1)
        self.peers = nn.ModuleList(build_model(m, data.input_shape, data.n_classes) for m in specs)
        torch.set_rng_state(state)
        self.peers.to(self.ctx.device)
        self.data = data

    def extra_modules(self):
        return [self.peers]

    def _kl(self, s, t):
        p = self.params
        return kd_loss(s, t, p.T) if p.t_squared else kd_loss_unscaled(s, t, p.T)

    def mutual_terms(self, logits: list, batch) -> list[dict]:
        """Per model: its CE and its mean KL to every other model's (detached) distribution,
        unweighted."""
        out = []
        for i, z in enumerate(logits):
            others = [o.detach() for j, o in enumerate(logits) if j != i]
            kl = sum(self._kl(z, o) for o in others) / len(others)
            out.append({"ce": self.hard_ce(z, batch), "kl": kl})
        return out

    def loss_terms(self, batch, step):
        logits = [self.student(batch.x)] + [m(batch.x) for m in self.peers]
        per = self.mutual_terms(logits, batch)
        terms = {"kl": per[0]["kl"], "peer_kl": sum(d["kl"] for d in per[1:]),
                 "peer_ce": sum(d["ce"] for d in per[1:])}
        if self.wants("ce"):
            terms["ce"] = per[0]["ce"]
        else:
            terms.pop("peer_ce")
        return terms

    @torch.no_grad()
    def epoch_metrics(self, epoch):
        if self.data is None or len(self.peers) == 0:
            return {}
        x, y = self.data.test.x.to(self.ctx.device), self.data.test.y.to(self.ctx.device)
        accs = []
        for m in self.peers:
            was = m.training
            m.eval()
            pred = torch.cat([m(x[i:i + 2048]).argmax(-1) for i in range(0, len(x), 2048)])
            accs.append((pred == y).float().mean().item())
            m.train(was)
        return {"peer_test_acc": sum(accs) / len(accs)}
