"""Generalist + specialists (Hinton, Vinyals & Dean 2015, arXiv:1503.02531, section 5).

1. Group the classes the generalist (the run's teacher) predicts together, without labels (paper
   s.5.2): K-means, with ``n_specialists`` clusters, on the columns of the covariance matrix of the
   generalist's predicted probabilities over its training inputs; each cluster is one specialist's
   subset S_m, and every class is in one. (The paper ran an on-line K-means; scikit-learn's batch
   K-means, best of 10 starts, minimises the same objective.) ``grouping = "confusion"`` is this
   project's earlier reading: a soft confusion matrix ``C[i, j] = mean p_gen(j | x)`` over the
   training samples of true class i, classes grouped greedily by ``C + C^T`` into ``n_specialists``
   clusters of ``cluster_size`` (it needs the labels; the paper chose covariance to avoid them).
2. Train one specialist per subset (the teacher's architecture, initialised from the generalist where
   shapes match, as in the paper) on enriched data: a fraction ``enrich`` of its training set comes
   from S_m, the rest from all other classes merged into one dustbin class. Afterwards the dustbin
   logit is corrected by the log of the prior ratio, undoing the enrichment (paper s.5.1).
3. For each input, K = the generalist's ``top_n`` most probable classes (the paper: n = 1); the
   active specialists are those with S_m meeting K. The combined q minimises
   ``KL(p_gen || q) + sum_m KL(p_m || C_m q)``, with C_m collapsing q onto S_m + dustbin, by a few
   (natural-)gradient steps on q's logits, batched over samples, from a start one EM step away from
   p_gen (see ``combine``). The paper stops here: the combination is its classifier.
4. This project's extension, not in the paper (which says distilling the specialists back into one
   model was not yet shown): a student distils q,
   ``soft_weight * T^2 * KL(q^(1/T) || p_s^T) + hard_weight * CE``.

q is computed once in ``setup`` for the whole (fixed) transfer set and for the test set, so training
costs what Hinton KD costs; ``ensemble_test_acc`` vs ``teacher_test_acc`` is the ensemble's gain.
With one specialist covering every class, the minimiser is the average of the two distributions
(the KL(p, q) objective is minimised by the mean of the p's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdengine.losses.logits import kd_loss
from kdengine.core.knobs import param, temperature_knob, weight_knob
from kdengine.methods.base import Method, register

_EPS = 1e-12


@dataclass
class SpecialistsParams:
    n_specialists: int = param(2, min=1, max=20, label="specialists",
                               help="Number of specialists: the clusters of K-means (covariance "
                                    "grouping: every class is in one) or of confusable classes.")
    grouping: str = param("covariance", choices=("covariance", "confusion"),
                          help="covariance: K-means on the covariance of the generalist's "
                               "predictions, no labels (the paper). confusion: the classes it "
                               "confuses most on labelled data, in clusters of a fixed size (an "
                               "earlier reading here; it needs the labels).")
    cluster_size: int = param(3, min=2, max=100, label="classes per specialist (confusion)")
    specialist_epochs: int = param(10, min=1, max=1000, label="specialist epochs")
    enrich: float = param(0.5, min=0.05, max=0.95, step=0.05, label="enrichment",
                          help="Share of a specialist's training data drawn from its own classes "
                               "(the rest is the dustbin).")
    top_n: int = param(1, min=1, max=100, label="generalist top-n",
                       help="A specialist is active on an input when its classes meet the "
                            "generalist's n most probable classes (the paper: 1).")
    combine_steps: int = param(30, min=0, max=10_000, label="combiner steps",
                               help="Natural-gradient steps on q's logits.")
    combine_lr: float = param(1.0, min=0.0, min_exclusive=True, max=1.5, step=0.1,
                              label="combiner step size")
    T: float = temperature_knob(4.0)
    soft_weight: float = weight_knob(0.9, "soft weight")
    hard_weight: float = weight_knob(0.1, "hard weight")


# ---- pure pieces (tested on their own) -------------------------------------------------------
def soft_confusion(probs: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """C[i, j] = mean over samples of true class i of p(j | x)."""
    c = torch.zeros(n_classes, n_classes)
    c.index_add_(0, y.cpu(), probs.cpu())
    return c / torch.bincount(y.cpu(), minlength=n_classes).clamp_min(1).unsqueeze(1)


def covariance_groups(probs: Tensor, n_groups: int, seed: int = 0) -> list[list[int]]:
    """The paper's grouping (s.5.2): K-means on the columns of the covariance matrix of the
    generalist's predicted probabilities ``probs`` (samples x classes), so classes that are
    predicted together share a group. No labels. Every class is in one group; groups sorted."""
    from sklearn.cluster import KMeans
    cov = torch.cov(probs.double().T).cpu().numpy()       # column j: how class j co-varies
    k = min(n_groups, cov.shape[0])
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(cov.T)
    return sorted(sorted(int(c) for c in (labels == j).nonzero()[0]) for j in set(labels.tolist()))


def cluster_classes(conf: Tensor, n_clusters: int, size: int) -> list[list[int]]:
    """Greedy disjoint clusters of the most confused classes.

    Seed each cluster with the most confused free pair, then add the free class with the largest
    summed affinity to the cluster until it has ``size`` classes."""
    n = conf.shape[0]
    aff = (conf + conf.T).clone()
    aff.fill_diagonal_(float("-inf"))
    free = set(range(n))
    out = []
    for _ in range(n_clusters):
        if len(free) < 2:
            break
        idx = sorted(free)
        sub = aff[idx][:, idx]
        flat = int(sub.argmax())
        cl = [idx[flat // len(idx)], idx[flat % len(idx)]]
        free -= set(cl)
        while len(cl) < size and free:
            cand = sorted(free)
            score = aff[cand][:, cl].sum(1)
            best = cand[int(score.argmax())]
            cl.append(best)
            free.discard(best)
        out.append(sorted(cl))
    return out


def collapse_matrix(subset: list[int], n_classes: int) -> Tensor:
    """(n_classes, |S| + 1) 0/1 map from full classes to the specialist's classes + dustbin."""
    m = torch.zeros(n_classes, len(subset) + 1)
    m[:, -1] = 1.0
    for k, c in enumerate(subset):
        m[c, -1] = 0.0
        m[c, k] = 1.0
    return m


def _kl_rows(p: Tensor, q: Tensor) -> Tensor:
    """Per-row KL(p || q) for probability tensors; 0 log 0 = 0, q clamped away from 0."""
    return torch.where(p > 0, p * (p.clamp_min(_EPS).log() - q.clamp_min(_EPS).log()),
                       torch.zeros_like(p)).sum(-1)


def combine(p_gen: Tensor, spec_probs: list[Tensor], subsets: list[list[int]], active: Tensor,
            steps: int = 30, lr: float = 1.0) -> Tensor:
    """log q minimising KL(p_gen || q) + sum_{m active} KL(p_m || C_m q), per row, over q's logits.

    p_gen: (B, N) probabilities; spec_probs[m]: (B, |S_m| + 1); active: (B, M) bool.
    Returns log-probabilities (B, N), detached.

    The steps are natural-gradient steps on the logits z (q = softmax(z)): the gradient w.r.t. z is
    preconditioned by the inverse Fisher information of the softmax, diag(q) - q q^T, which turns
    it into ``dz = -lr * (g - <g, q>)`` with g the gradient w.r.t. q. Plain gradient descent on z
    crawls on classes whose q is tiny (measured: still 7% off after 300 steps where this is exact
    after 100). The start is the generalist averaged with each active specialist's distribution
    spread back over the full classes (its dustbin mass shared out in proportion to p_gen): one EM
    step from p_gen, and already the minimiser when the specialists cover every class."""
    mats = [collapse_matrix(s, p_gen.shape[1]).to(p_gen) for s in subsets]
    act = active.to(p_gen.dtype)
    n_terms = 1.0 + act.sum(1)

    def objective(q: Tensor) -> Tensor:
        obj = _kl_rows(p_gen, q)
        for m, (pm, cm) in enumerate(zip(spec_probs, mats)):
            obj = obj + act[:, m] * _kl_rows(pm, q @ cm)
        return (obj / n_terms).sum()   # dividing by the term count leaves each minimiser as is

    q0 = p_gen.clone()
    for m, (pm, cm) in enumerate(zip(spec_probs, mats)):
        spread = (pm / (p_gen @ cm).clamp_min(_EPS)) @ cm.T * p_gen
        q0 = q0 + act[:, m:m + 1] * spread
    z = (q0 / n_terms.unsqueeze(1)).clamp_min(_EPS).log()
    with torch.enable_grad():
        for _ in range(steps):
            q = F.softmax(z, dim=-1).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(objective(q), q)
            step = g - (g * q).sum(-1, keepdim=True)
            z = z - lr * step.clamp(-10.0, 10.0)      # clamp: a safety net for a far-off start
    return F.log_softmax(z.detach(), dim=-1)


def combine_objective(p_gen, spec_probs, subsets, active, log_q: Tensor) -> Tensor:
    """Per-row KL(p_gen || q) + sum_{m active} KL(p_m || C_m q) (for tests and the explorer)."""
    q = log_q.exp()
    obj = _kl_rows(p_gen, q)
    for m, (pm, s) in enumerate(zip(spec_probs, subsets)):
        obj = obj + active[:, m].to(q.dtype) * _kl_rows(pm, q @ collapse_matrix(s, q.shape[1]).to(q))
    return obj


def active_specialists(p_gen: Tensor, subsets: list[list[int]], top_n: int) -> Tensor:
    """(B, M) bool: specialist m is active when S_m meets the generalist's top-n classes."""
    top = p_gen.topk(min(top_n, p_gen.shape[1]), dim=-1).indices
    cols = []
    for s in subsets:
        member = torch.zeros(p_gen.shape[1], dtype=torch.bool, device=p_gen.device)
        member[s] = True
        cols.append(member[top].any(-1))
    return torch.stack(cols, 1) if cols else torch.zeros(len(p_gen), 0, dtype=torch.bool)


# ---- the method ------------------------------------------------------------------------------
@register
class Specialists(Method):
    name = "specialists"
    Params = SpecialistsParams
    title = "Generalist + specialists (Hinton 2015 s.5)"
    paper = "Hinton, Vinyals, Dean 2015, arXiv:1503.02531, section 5"
    formula = (r"w_{hard}\,CE(y, s) + "
               r"w_{soft}\,T^2\,KL\big(q^{1/T}\,\|\,\sigma(s/T)\big),\quad q = \arg\min_q KL(p_{gen}\,\|\,q) + "
               r"\textstyle\sum_m KL(p_m\,\|\,C_m q)")
    weight_knobs = {"kd": "soft_weight", "ce": "hard_weight"}
    temperature = "T"
    cache_teacher_logits = False
    lint_probe = "skip"           # setup trains specialists

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        self.specialists: list[nn.Module] = []
        self.subsets: list[list[int]] = []
        self.log_q: Tensor | None = None
        self._arts: dict = {}
        self._metrics: dict = {}

    def _emit(self, message: str, frac: float):
        self.ctx.phase("specialists", message, frac)

    def setup(self, data):
        p, dev = self.params, self.ctx.device
        gen = self.teachers[0]
        n = data.n_classes
        tr = data.teacher_train
        p_train = self._probs(gen, tr.x)
        conf = soft_confusion(p_train, tr.y, n)      # shown on the page; groups only by choice
        if p.grouping == "covariance":
            self.subsets = covariance_groups(p_train, p.n_specialists, self.ctx.seed)
        else:
            self.subsets = cluster_classes(conf, p.n_specialists, min(p.cluster_size, n - 1))
        self.specialists = [self._train_specialist(m, s, data) for m, s in enumerate(self.subsets)]
        self._emit("combining generalist and specialists", 1.0)
        self.log_q = self.combined_log_probs(data.transfer.x)
        q_test = self.combined_log_probs(data.test.x)
        p_test = self._probs(gen, data.test.x)
        y = data.test.y.to(dev)
        gen_acc = (p_test.argmax(-1) == y).float().mean().item()
        ens_acc = (q_test.argmax(-1) == y).float().mean().item()
        self._metrics = {"ensemble_test_acc": ens_acc, "generalist_test_acc": gen_acc}
        self.ctx.notice(f"Specialists {self.subsets}: generalist {gen_acc:.2%} -> generalist + "
                        f"specialists {ens_acc:.2%} on test")
        hard = torch.zeros(n, n)
        hard.index_put_((y.cpu(), p_test.argmax(-1).cpu()), torch.ones(len(y)), accumulate=True)
        self._arts = {"specialists": {
            "clusters": self.subsets, "class_names": list(data.class_names),
            "soft_confusion": conf.tolist(), "test_confusion": hard.tolist(),
            "generalist_test_acc": gen_acc, "ensemble_test_acc": ens_acc}}

    def _probs(self, model: nn.Module, x: Tensor, chunk: int = 2048) -> Tensor:
        return torch.cat([F.softmax(self.run_teacher(model, x[i:i + chunk].to(self.ctx.device)), -1)
                          for i in range(0, len(x), chunk)])

    def _train_specialist(self, m: int, subset: list[int], data) -> nn.Module:
        from kdengine.models.families import build_model
        from kdengine.teachers.fitting import fit_supervised
        cfg = self.ctx.config
        p = self.params
        x, y = data.teacher_train.x, data.teacher_train.y
        in_s = torch.isin(y, torch.tensor(subset))
        g = torch.Generator().manual_seed(self.ctx.seed * 1000 + m)
        idx_s = in_s.nonzero().squeeze(1)
        idx_d = (~in_s).nonzero().squeeze(1)
        n_dust = min(len(idx_d), int(round(len(idx_s) * (1 - p.enrich) / p.enrich)))
        idx_d = idx_d[torch.randperm(len(idx_d), generator=g)[:n_dust]]
        remap = torch.full((data.n_classes,), len(subset), dtype=torch.long)
        remap[subset] = torch.arange(len(subset))
        idx = torch.cat([idx_s, idx_d])
        xs, ys = x[idx], remap[y[idx]]
        mcfg = cfg.teacher.model if cfg is not None else None
        torch.manual_seed(self.ctx.seed * 1000 + m)
        model = build_model(mcfg, data.input_shape, len(subset) + 1)
        # Paper: specialists start from the generalist's weights (all layers but the output).
        g_state = self.teachers[0].state_dict()
        own = model.state_dict()
        own.update({k: v for k, v in g_state.items() if k in own and own[k].shape == v.shape})
        model.load_state_dict(own)
        epochs = p.specialist_epochs
        lr = cfg.teacher.lr if cfg is not None else 1e-3
        bs = cfg.train.batch_size if cfg is not None else 64
        fit_supervised(model, xs, ys, epochs, lr, bs, self.ctx.seed + m, self.ctx.device,
                       progress=lambda f, msg: self._emit(
                           f"specialist {m + 1}/{len(self.subsets)} on classes {subset}: {msg}",
                           (m + f) / max(1, len(self.subsets))),
                       should_stop=self.ctx.should_stop)
        # Undo the enrichment: shift the dustbin logit by the log prior ratio (paper s.5.1).
        pi_s_true = float(in_s.float().mean())
        pi_s_train = len(idx_s) / len(idx)
        shift = math.log(max(1 - pi_s_true, _EPS) / max(1 - pi_s_train, _EPS)) \
            - math.log(max(pi_s_true, _EPS) / max(pi_s_train, _EPS))
        model.register_buffer("dustbin_shift", torch.tensor(shift))
        model.zero_grad(set_to_none=True)     # fit_supervised leaves the last step's grads
        model.eval().requires_grad_(False)
        return model.to(self.ctx.device)

    def _specialist_probs(self, model: nn.Module, x: Tensor) -> Tensor:
        z = self.run_teacher(model, x)
        z = torch.cat([z[:, :-1], z[:, -1:] + model.dustbin_shift], 1)
        return F.softmax(z, -1)

    @torch.no_grad()
    def combined_log_probs(self, x: Tensor, chunk: int = 4096) -> Tensor:
        """log q for every row of x (generalist + active specialists, combined)."""
        p = self.params
        out = []
        for i in range(0, len(x), chunk):
            xb = x[i:i + chunk].to(self.ctx.device)
            p_gen = F.softmax(self.run_teacher(self.teachers[0], xb), -1)
            specs = [self._specialist_probs(m, xb) for m in self.specialists]
            act = active_specialists(p_gen, self.subsets, p.top_n)
            out.append(combine(p_gen, specs, self.subsets, act, p.combine_steps, p.combine_lr))
        return torch.cat(out)

    def loss_terms(self, batch, step):
        p = self.params
        s = self.student(batch.x)
        terms = {"kd": kd_loss(s, self.log_q[batch.idx], p.T)}
        return self.with_hard_ce(terms, s, batch)

    def epoch_metrics(self, epoch):
        return dict(self._metrics)

    def artifacts(self):
        # Sent once (after the first epoch): the clusters and matrices do not change afterwards.
        arts, self._arts = self._arts, {}
        return arts
