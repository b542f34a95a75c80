"""Deep mutual learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018, arXiv:1706.00384), and online KD.

``cohort`` mode: the student and ``cohort_size - 1`` peers of the same architecture start from
different random weights and train together, no pre-trained teacher: each minimises
``CE(y, z_i) + kl_weight * T^2 * mean_{j != i} KL(p_j || p_i)``, with the peers' distributions as
fixed targets in each term. ``update = "alternating"`` (the default) is the paper's Algorithm 1,
which for more than two models (its section 3.3) updates each in turn: on each batch every peer
steps once, against the latest predictions of all the others (a peer updated before it in this
batch included), then the student learns from the updated peers (the trainer's step). The peers
have an optimiser of their own, of the run's kind and under the run's learning-rate schedule; it,
its schedule and the peers are in the run's checkpoint (``extra_state``). ``update = "joint"``
updates every model at once from the same batch's predictions: the common simplification, one
backward pass for all. ``online`` mode: the single peer has the teacher's architecture
(``teacher.model`` in the run's config) and is trained together with the student: "teacher and
student trained at once".

Terms: ``ce`` and ``kl`` are the student's; ``peer_ce`` and ``peer_kl`` sum over the peers. The
peers' mean test accuracy is recorded each epoch as ``peer_test_acc``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdengine.losses.logits import kd_loss, kd_loss_unscaled
from kdengine.core.knobs import param, temperature_knob, weight_knob
from kdengine.core.optim import make_optimizer, make_scheduler
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
    update: str = param("alternating", choices=("alternating", "joint"),
                        help="alternating: each model in turn, against the others' latest "
                             "predictions; the peers first, then the student (the paper's "
                             "Algorithm 1). joint: one step updates every model from the same "
                             "predictions (a common simplification: one backward pass, cheaper).")


@register
class DeepMutualLearning(Method):
    name = "dml"
    Params = DMLParams
    title = "Deep mutual learning / online KD (students learn together)"
    paper = "Zhang et al. 2018, arXiv:1706.00384"
    formula = (r"w_{hard}\,CE(y, z_i) + "
               r"w_{kl}\,T^2\,\tfrac{1}{K-1}\textstyle\sum_{j \ne i} KL(p_j\,\|\,p_i) \quad \text{for each model } i")
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
        self.peer_opt = self.peer_sched = None
        if p.update == "alternating":
            # One optimiser for all peers: a peer's step moves only the peer that has gradients.
            self.peer_opt = make_optimizer(cfg.train, self.peers.parameters())
            self.peer_sched = make_scheduler(cfg.train, self.peer_opt, self.ctx.total_steps)

    def extra_modules(self):
        # Alternating: the peers have their own optimiser, so they stay out of the trainer's.
        return [] if self.alternating else [self.peers]

    @property
    def alternating(self) -> bool:
        return getattr(self, "peer_opt", None) is not None

    def extra_state(self):
        # Alternating: the peers and their optimiser are outside the trainer's checkpointed ones.
        if not self.alternating:
            return {}
        state = {"peers": {k: v.detach().cpu() for k, v in self.peers.state_dict().items()},
                 "peer_opt": self.peer_opt.state_dict()}
        if self.peer_sched is not None:
            state["peer_sched"] = self.peer_sched.state_dict()
        return state

    def load_extra_state(self, state):
        if self.alternating and state:
            self.peers.load_state_dict(state["peers"])
            self.peer_opt.load_state_dict(state["peer_opt"])
            if self.peer_sched is not None and "peer_sched" in state:
                self.peer_sched.load_state_dict(state["peer_sched"])

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        self.peers.train(mode)

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
        if self.alternating:
            return self._alternating_terms(batch)
        logits = [self.student(batch.x)] + [m(batch.x) for m in self.peers]
        per = self.mutual_terms(logits, batch)
        terms = {"kl": per[0]["kl"], "peer_kl": sum(d["kl"] for d in per[1:]),
                 "peer_ce": sum(d["ce"] for d in per[1:])}
        if self.wants("ce"):
            terms["ce"] = per[0]["ce"]
        else:
            terms.pop("peer_ce")
        return terms

    def _alternating_terms(self, batch):
        """Each peer in turn steps against the latest predictions of every other model; the
        student's terms (for the trainer's step) then use the peers' updated predictions."""
        w = self.term_weights
        with torch.no_grad():
            latest = [self.student(batch.x)] + [m(batch.x) for m in self.peers]
        peer_ce = peer_kl = 0.0
        for k, peer in enumerate(self.peers, start=1):
            z = peer(batch.x)
            others = [o for j, o in enumerate(latest) if j != k]
            ce, kl = self.hard_ce(z, batch), sum(self._kl(z, o) for o in others) / len(others)
            self.peer_opt.zero_grad(set_to_none=True)
            (w.get("peer_ce", 1.0) * ce + w.get("peer_kl", 1.0) * kl).backward()
            self.peer_opt.step()
            with torch.no_grad():
                latest[k] = peer(batch.x)          # the next model learns from this update
            peer_ce, peer_kl = peer_ce + ce.detach(), peer_kl + kl.detach()
        if self.peer_sched is not None:
            self.peer_sched.step()                 # once per batch, as the student's schedule
        z = self.student(batch.x)
        kl = sum(self._kl(z, o) for o in latest[1:]) / len(self.peers)
        # the peers' terms are shown (detached): they were already optimised above
        terms = {"kl": kl, "peer_kl": peer_kl}
        if self.wants("ce"):
            terms["ce"] = self.hard_ce(z, batch)
            terms["peer_ce"] = peer_ce
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

