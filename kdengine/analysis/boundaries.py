"""Boundary-supporting samples (BSS), boundary similarity, and the 2-D grid evaluator.

Heo, Lee, Yun & Choi, "Knowledge Distillation with Adversarial Samples Supporting Decision Boundary",
AAAI 2019, arXiv:1805.05532; authors' code github.com/bhheo/BSS_distillation (PyTorch 0.4.1).

The attack (reconstructed from ``attacks/attack_BSS.py`` of the authors' code)
-------------------------------------------------------------------------------
A base sample x of class b (the teacher classifies it as b) is pushed toward the decision boundary
between b and a target class k. With the margin ``m(x) = z_b(x) - z_k(x)`` of the attacked model's
logits z and its input gradient ``g = d m / d x``::

    x_{i+1} = x_i - eta * (m(x_i) + eps) * g / ||g||_2^p         (per sample)

and a sample stops moving as soon as the model no longer predicts b (it has crossed a boundary).
The authors' code uses p = 1 (``rule="authors"``): the step is measured in logit units times a unit
direction, so its length in input space depends on how steep the logits are; with eta = 0.3 on
standardised 2-D data it jumps far past the boundary in one step. p = 2 (``rule="deepfool"``, the
default here) is DeepFool's linearised step: each move covers the fraction eta of the estimated
distance to the boundary, whatever the logit scale, so for a locally linear model
``m_i + eps = (1 - eta)^i (m_0 + eps)`` and the margin shrinks monotonically toward -eps: ``eps`` is
the margin (in logits) by which a sample finally crosses. With eta < 1 a sample never quite gets
there in 10 steps (eta 0.3 leaves about 3% of the margin: it stops near the boundary); the BSS
method's default, eta 1 with eps 0.02, aims just past it and crosses. The ``authors`` rule runs
without the safeguard (below), as the official code does. Authors' defaults: eta 0.3, 10 steps,
eps 1e-4, attack on logits (not probabilities), inputs clamped to [-2.5, 2.5] (normalised CIFAR).
Each rule comes with its own eta and eps (``RULE_SETTINGS``): choosing the authors' rule gives their
0.3 and 1e-4 unless a value is set by hand (``rule_settings``).

Their code relies on APIs PyTorch has since removed or changed, re-expressed here:
``torch.autograd.gradcheck.zero_gradients`` (removed in 1.9; we use ``torch.autograd.grad``),
``autograd.Variable`` and writes through ``.data`` (plain tensors, ``requires_grad_``, no ``.data``),
``CrossEntropyLoss(size_average=False)`` (now ``reduction="sum"``), ``loss.data[0]`` in older
revisions (now ``.item()``), ``dataset_name is 'CIFAR-10'`` string identity, and ``torch.load`` of
whole pickled networks (we only load state dicts with ``weights_only=True``).

Base samples and targets (``train_BSS_distillation.py``): the authors' final code attacks only
samples that the teacher AND the student classify correctly (``rule="both_correct"``; an earlier
revision asked only the teacher, ``rule="teacher_correct"``); when there are more than
``attack_size`` (64), those with the largest ``sum_{c != y} (p_t,c - p_s,c)^2`` (teacher/student
disagreement outside the true class) are kept. The target class is drawn from the teacher's non-top
classes with probability proportional to the teacher's softmax, so the runner-up is the most likely
target.

Boundary similarity (MagSim, AngSim; the project's reading of the paper's description, not verified
against its text, which was not at hand offline; the exact normalisation and the probe are ours, and
``similarity_note`` says so on the Boundaries page): for a probe sample x_n of base class b_n
and a fixed target class k_n, run the same boundary search on the teacher and on the student and take
the perturbation vectors ``v_t = x_adv^t - x``, ``v_s = x_adv^s - x`` (distance and direction from the
sample to each model's b/k boundary). Over the N probes where both models predict b_n and both
searches reach the boundary::

    MagSim = 1/N * sum_n  min(||v_t||, ||v_s||) / max(||v_t||, ||v_s||)
    AngSim = 1/N * sum_n  max(0, <v_t, v_s> / (||v_t|| ||v_s||))

Both lie in [0, 1] and are 1 when the student's boundary sits at the teacher's distance (MagSim) and
in the teacher's direction (AngSim) from every probe sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

RULES = ("deepfool", "authors")
# Each rule's own step size eta and margin eps. The authors' are their code's (step_alpha 0.3 and
# the 1e-4 in attack_BSS.py); DeepFool's aim just past the boundary (module docstring).
RULE_SETTINGS = {"deepfool": {"step": 1.0, "eps": 0.02}, "authors": {"step": 0.3, "eps": 1e-4}}
# Which samples may be attacked: both models right (the authors' final code), or the teacher alone.
BASE_RULES = ("both_correct", "teacher_correct")


def rule_settings(rule: str, step: float | None = None, eps: float | None = None
                  ) -> tuple[float, float]:
    """(eta, eps) for an attack rule: the values given, else the rule's own."""
    own = RULE_SETTINGS[rule]
    return (own["step"] if step is None else step, own["eps"] if eps is None else eps)


# ---------------------------------------------------------------------------------------------
# the attack
# ---------------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    x_adv: Tensor          # (B, *shape) where each sample stopped
    traj: Tensor           # (S+1, B, *shape) every point visited; frozen samples repeat
    margins: Tensor        # (S+1, B) margin z_b - z_k at each point of traj
    steps_taken: Tensor    # (B,) moves each sample made
    flipped: Tensor        # (B,) the model no longer predicts b at the end
    base: Tensor           # (B,) class b
    target: Tensor         # (B,) class k
    logits_before: Tensor  # (B, C) attacked model's logits at x
    logits_after: Tensor   # (B, C) at x_adv


def _margin(logits: Tensor, base: Tensor, target: Tensor) -> Tensor:
    return logits.gather(1, base[:, None])[:, 0] - logits.gather(1, target[:, None])[:, 0]


def _forward(model: nn.Module, x: Tensor, base: Tensor, target: Tensor):
    """Logits, margin and the margin's input gradient at x, in one forward/backward."""
    xi = x.detach().requires_grad_(True)
    logits = model(xi).float()
    m = _margin(logits, base, target)
    (g,) = torch.autograd.grad(m.sum(), xi)
    return logits.detach(), m.detach(), g


def boundary_attack(model: nn.Module, x: Tensor, base: Tensor, target: Tensor, *, step: float = 0.3,
                    steps: int = 10, eps: float = 1e-4, rule: str = "deepfool",
                    clamp: tuple[float, float] | None = None, safeguard: bool | None = None
                    ) -> AttackResult:
    """Iterative boundary search on ``model`` from ``x`` (class ``base``) toward class ``target``.

    Batched: one forward/backward per step for the whole batch, no per-sample Python loop. Records
    every point (``traj``) and the margin there; the model's parameters get no gradient. Update rule
    in the module docstring. ``safeguard`` (not in the authors' code) rejects a move that does not
    shrink the margin or that overshoots the boundary by more than the margin it started from, and
    halves that sample's step instead: a ReLU network's gradient can be nearly flat in places, where
    the linearised step jumps far away. With it the margin falls monotonically and a sample that
    flips ends just past the boundary.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if safeguard is None:          # "authors" is the official code, which has no safeguard
        safeguard = rule != "authors"
    power = 2.0 if rule == "deepfool" else 1.0
    x = x.detach().float()
    flat = (slice(None),) + (None,) * (x.dim() - 1)      # (B,) -> (B, 1, ...) for broadcasting
    # Mixed precision would make the small final steps meaningless; gradients w.r.t. the input only.
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        cur = x.clone()
        logits, m, g = _forward(model, cur, base, target)
        logits_before = logits
        eta = torch.full_like(m, step)
        steps_taken = torch.zeros(len(x), dtype=torch.long, device=x.device)
        points, margins = [cur], [m]
        for _ in range(steps):
            active = logits.argmax(1) == base            # a sample stops once it has flipped
            if not bool(active.any()):
                break
            norm = g.flatten(1).norm(dim=1).clamp_min(1e-12) ** power
            cand = cur - (eta * (m + eps) / norm)[flat] * g
            if clamp is not None:
                cand = cand.clamp(*clamp)
            c_logits, c_m, c_g = _forward(model, cand, base, target)
            accept = active
            if safeguard:
                accept = active & (c_m < m) & (c_m > -m)
                eta = torch.where(active & ~accept, eta / 2, eta)
            cur = torch.where(accept[flat], cand, cur)
            g = torch.where(accept[flat], c_g, g)
            m = torch.where(accept, c_m, m)
            logits = torch.where(accept[:, None], c_logits, logits)
            steps_taken += accept.long()
            points.append(cur)
            margins.append(m)
    # Pad so every attack returns S+1 points however early all samples stopped.
    while len(points) < steps + 1:
        points.append(points[-1])
        margins.append(margins[-1])
    return AttackResult(x_adv=cur.detach(), traj=torch.stack(points).detach(),
                        margins=torch.stack(margins), steps_taken=steps_taken,
                        flipped=logits.argmax(1) != base, base=base, target=target,
                        logits_before=logits_before, logits_after=logits)


def sample_targets(teacher_logits: Tensor, base: Tensor, generator: torch.Generator | None = None
                   ) -> Tensor:
    """Target class k != base, drawn with probability proportional to the teacher's softmax
    (authors' "target class sampling"; the runner-up is the likeliest)."""
    p = F.softmax(teacher_logits.float(), 1) + 1e-12      # never an all-zero row
    p = p.scatter(1, base[:, None], 0.0)                  # never the base
    return torch.multinomial(p, 1, generator=generator)[:, 0]


def runner_up(logits: Tensor, base: Tensor) -> Tensor:
    """The most probable class other than ``base`` (deterministic targets for the probe set)."""
    return logits.float().scatter(1, base[:, None], float("-inf")).argmax(1)


def select_base(t_logits: Tensor, s_logits: Tensor, y: Tensor, labeled: Tensor, k: int,
                rule: str = "both_correct") -> Tensor:
    """Indices of at most ``k`` base samples; among the allowed ones, the largest teacher/student
    disagreement outside the base class comes first (authors' "base sample selection").

    Allowed (``rule``): ``both_correct``, the teacher and the student both classify the sample
    correctly (the authors' final code: ``condition1 & condition2``); ``teacher_correct``, the
    teacher alone. A sample without a label keeps the teacher's class, and under ``both_correct``
    the student must predict that class too."""
    if rule not in BASE_RULES:
        raise ValueError(f"rule must be one of {BASE_RULES}, got {rule!r}")
    pred = t_logits.argmax(1)
    ok = (pred == y) | ~labeled
    if rule == "both_correct":
        ok = ok & (s_logits.argmax(1) == pred)     # pred == y wherever the teacher had to be right
    d = (F.softmax(t_logits.float(), 1) - F.softmax(s_logits.detach().float(), 1)) ** 2
    score = d.sum(1) - d.gather(1, pred[:, None])[:, 0]
    score = torch.where(ok, score, torch.full_like(score, float("-inf")))
    top = score.topk(min(k, len(score))).indices
    return top[torch.isfinite(score[top])]


# ---------------------------------------------------------------------------------------------
# boundary similarity
# ---------------------------------------------------------------------------------------------
def boundary_similarity(v_t: Tensor, v_s: Tensor, valid: Tensor | None = None) -> dict[str, float]:
    """MagSim and AngSim (module docstring) from perturbation vectors (B, ...) of teacher and student.
    ``valid`` marks the probes to average over; with none valid both are NaN."""
    vt, vs = v_t.flatten(1).float(), v_s.flatten(1).float()
    nt, ns = vt.norm(dim=1), vs.norm(dim=1)
    ok = (nt > 0) & (ns > 0)
    if valid is not None:
        ok = ok & valid
    if not bool(ok.any()):
        return {"magsim": float("nan"), "angsim": float("nan"), "probe_valid": 0.0}
    mag = torch.minimum(nt, ns) / torch.maximum(nt, ns)
    ang = (F.cosine_similarity(vt, vs, dim=1)).clamp_min(0.0)
    return {"magsim": mag[ok].mean().item(), "angsim": ang[ok].mean().item(),
            "probe_valid": ok.float().mean().item()}


# Settings for measuring the distance to a boundary (not for training): bigger steps and more of
# them than the BSS defaults so most probes actually reach the boundary.
PROBE_ATTACK = dict(step=0.5, steps=25, eps=1e-3, rule="deepfool")
PROBE_SIZE = 128


def similarity_note() -> str:
    """How MagSim and AngSim are measured here, beside the paper's, in plain words (the Boundaries
    page shows it). Built from the probe's settings, so the words follow the code."""
    p = PROBE_ATTACK
    return (
        f"**How MagSim and AngSim are measured here.** From each of up to {PROBE_SIZE} test samples "
        f"the teacher gets right, a boundary search pushes the sample towards the teacher's second "
        f"most likely class, once on the teacher and once on the student, and keeps how far the "
        f"sample had to move (the distance to that model's boundary) and in which direction. "
        f"MagSim is the average of the shorter distance divided by the longer one; AngSim is the "
        f"average agreement of the two directions (the cosine of the angle between them, counted "
        f"as 0 when they point apart). Both are 1 when the student's boundary sits where the "
        f"teacher's does. Samples where either search does not cross its boundary, or that the "
        f"student gets wrong, are left out.\n\n"
        f"The search is not quite the attack BSS uses in training: it always aims at the "
        f"teacher's second most likely class (training draws the class in proportion to the "
        f"teacher's probabilities), and it takes up to {p['steps']} steps, each covering "
        f"{p['step']:g} of the estimated distance that is left (training: 10 steps by default, "
        f"each aimed just past the boundary), so that most samples reach the boundary and the "
        f"distances can be compared. "
        f"The paper (Heo et al., AAAI 2019) introduced MagSim and AngSim to compare the two "
        f"boundaries in the same two ways. These formulas are this app's reading of the paper's "
        f"description, and the paper's own probe (which samples, which classes, which search) "
        f"could not be checked here: compare these numbers with each other, not with the paper's.")


class SimilarityProbe:
    """A fixed probe set with fixed targets; the teacher's perturbations are computed once (the
    teacher never changes), the student's at each call."""

    def __init__(self, teacher: nn.Module, x: Tensor, y: Tensor, device: torch.device,
                 size: int = PROBE_SIZE, seed: int = 0, clamp: tuple[float, float] | None = None):
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=gen)
        x, y = x[idx].to(device), y[idx].to(device)
        teacher.eval()
        with torch.no_grad():
            t = teacher(x).float()
        keep = (t.argmax(1) == y).nonzero()[:size, 0]       # teacher-correct samples only
        self.x, self.base = x[keep], y[keep]
        self.target = runner_up(t[keep], self.base)
        self.clamp = clamp
        res = boundary_attack(teacher, self.x, self.base, self.target, clamp=clamp, **PROBE_ATTACK)
        self.v_t, self.t_ok = res.x_adv - self.x, res.flipped

    def __len__(self) -> int:
        return len(self.x)

    def measure(self, student: nn.Module) -> dict[str, float]:
        if len(self) == 0:
            return {}
        res = boundary_attack(student, self.x, self.base, self.target, clamp=self.clamp,
                              **PROBE_ATTACK)
        s_base_ok = res.logits_before.argmax(1) == self.base
        return boundary_similarity(self.v_t, res.x_adv - self.x, self.t_ok & res.flipped & s_base_ok)


# ---------------------------------------------------------------------------------------------
# 2-D grids
# ---------------------------------------------------------------------------------------------
def grid_bounds(x: Tensor | np.ndarray, pad: float = 0.1) -> list[float]:
    """[x0, x1, y0, y1] around 2-D points, padded by ``pad`` of the range on each side."""
    a = np.asarray(x, dtype=np.float64)
    lo, hi = a.min(0), a.max(0)
    r = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * r, hi + pad * r
    return [float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])]


def grid_points(bounds, n: int = 100) -> Tensor:
    """The (n*n, 2) grid, row-major with y along rows: point [i*n + j] = (xs[j], ys[i])."""
    x0, x1, y0, y1 = bounds
    xs = torch.linspace(x0, x1, n)
    ys = torch.linspace(y0, y1, n)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


@torch.no_grad()
def grid_eval(models: nn.Module | list[nn.Module], bounds, n: int = 100,
              device: torch.device | str | None = None) -> np.ndarray | list[np.ndarray]:
    """Class probabilities on an n x n grid, one batched forward pass per model.

    Returns an array (n, n, C) per model with ``probs[i, j]`` at ``(xs[j], ys[i])``, the layout a
    heatmap's ``z[row][col]`` expects; a list when given a list of models."""
    many = isinstance(models, (list, tuple))
    out = []
    for m in (models if many else [models]):
        dev = device if device is not None else next(m.parameters()).device
        was = m.training
        m.eval()
        p = F.softmax(m(grid_points(bounds, n).to(dev)).float(), 1)
        m.train(was)
        out.append(p.reshape(n, n, -1).cpu().numpy())
    return out if many else out[0]


def quantise(probs: np.ndarray) -> list:
    """Probabilities as integer percents (0..100): a 60 x 60 x 2 grid is ~20 kB of JSON."""
    return np.rint(np.asarray(probs) * 100).astype(np.int16).tolist()


def dequantise(q) -> np.ndarray:
    return np.asarray(q, dtype=np.float32) / 100.0


# ---------------------------------------------------------------------------------------------
# the trainer's hook: boundary snapshots and similarity for every run that has a teacher
# ---------------------------------------------------------------------------------------------
class BoundaryMonitor:
    """What the trainer records at each epoch end about boundaries, whatever the method:

    * on 2-D data, a grid of the student's class probabilities (``grid_student``, every epoch) and
      the teacher's (``grid_teacher``, once), as integer percents with their bounds;
    * MagSim / AngSim against the teacher on a fixed probe of test samples (2-D and image data),
      unless the method reported them itself.
    """

    GRID_N = 60          # stored snapshots; the page can ask for finer grids from live models

    def __init__(self, teacher: nn.Module | None, data, device: torch.device, seed: int = 0,
                 probe_size: int = PROBE_SIZE):
        self.teacher, self.data, self.device = teacher, data, device
        self.kind = data.kind
        self.bounds = grid_bounds(data.transfer.x) if self.kind == "2d" else None
        self._teacher_sent = False
        self.measure = True         # the trainer turns MagSim/AngSim off where they cost too much
        self.seed, self.probe_size = seed, probe_size
        self.probe: SimilarityProbe | None = None

    def metrics(self, student: nn.Module, already: dict) -> dict[str, float]:
        if (self.teacher is None or not self.measure or self.kind not in ("2d", "image")
                or "magsim" in already):
            return {}
        if self.probe is None:      # built on first use: a method that measures itself needs none
            self.probe = SimilarityProbe(self.teacher, self.data.test.x, self.data.test.y,
                                         self.device, self.probe_size, self.seed,
                                         clamp=input_range(self.data))
        return self.probe.measure(student)

    def artifacts(self, student: nn.Module, epoch: int) -> dict:
        if self.kind != "2d":
            return {}
        n = self.GRID_N
        out = {"grid_student": {"epoch": epoch, "bounds": self.bounds, "n": n,
                                "probs": quantise(grid_eval(student, self.bounds, n, self.device))}}
        if self.teacher is not None and not self._teacher_sent:
            self._teacher_sent = True
            out["grid_teacher"] = {"bounds": self.bounds, "n": n,
                                   "probs": quantise(grid_eval(self.teacher, self.bounds, n,
                                                               self.device))}
        return out


def input_range(data) -> tuple[float, float] | None:
    """Clamp box for attacks on images: the normalised range of the training pixels (the authors
    clamp normalised CIFAR to [-2.5, 2.5]); no clamp for 2-D points."""
    if data.kind != "image":
        return None
    x = data.teacher_train.x
    return float(x.min()), float(x.max())


# ---------------------------------------------------------------------------------------------
# replay: every stored epoch at once, for a view that steps through them without asking again
# ---------------------------------------------------------------------------------------------
def disagreement(p_t: np.ndarray, p_s: np.ndarray) -> tuple[np.ndarray, float]:
    """Total-variation distance 0.5 * sum |p_t - p_s| per grid cell, and the share of cells whose
    top class differs."""
    tv = 0.5 * np.abs(p_t - p_s).sum(-1)
    return tv, float((p_t.argmax(-1) != p_s.argmax(-1)).mean())


def epoch_history(store, run_id: str, latest: dict | None = None,
                  latest_bss: dict | None = None) -> list[dict]:
    """Every stored epoch's student grid (dequantised) with that epoch's BSS samples, oldest first.

    ``latest`` / ``latest_bss``: a live run's newest grid and samples from the engine's snapshot,
    which may be an epoch ahead of the store."""
    grids = {g["epoch"]: (step, g) for step, g in store.artifacts(run_id, "grid_student")}
    bss = dict(store.artifacts(run_id, "bss"))
    out = {e: {"epoch": int(e), "probs": dequantise(g["probs"]), "bounds": g["bounds"],
               "bss": bss.get(step)} for e, (step, g) in grids.items()}
    if latest is not None:
        e = int(latest["epoch"])
        out[e] = {"epoch": e, "probs": dequantise(latest["probs"]), "bounds": latest["bounds"],
                  "bss": latest_bss if latest_bss is not None else out.get(e, {}).get("bss")}
    return [out[e] for e in sorted(out)]


def similarity_absent_reason(cfg: dict, has_teacher: bool) -> str:
    """Why a run has no MagSim / AngSim curve, in the words a student needs (``cfg`` is the run's
    config as a dict). Mirrors the rule in ``kdengine.run.monitors.boundary_monitor``."""
    train, data = cfg.get("train", {}), cfg.get("data", {})
    mode = train.get("boundary_metrics", "auto")
    method = cfg.get("method", {}).get("name", "?")
    from kdengine.core.config import TOY_DATASETS
    two_d = data.get("name") in TOY_DATASETS
    if not has_teacher:
        return ("This run has no teacher, so there is no teacher boundary to compare with (for a "
                "student-alone reference that has one, use plain KD with soft weight 0).")
    switch = "“measure boundary similarity” (the Lab: Training, more)"
    if mode == "off":
        return f"MagSim / AngSim were switched off for this run ({switch})."
    if mode == "auto" and not two_d and method != "bss":
        return (f"MagSim / AngSim are not measured for this run: unless switched on, they are "
                f"measured on 2-D data and for BSS only, and this is a {method} run on "
                f"{data.get('name', '?')} (on image data the probe attack costs about ten epochs). "
                f"Switch on {switch} to measure them.")
    return "MagSim / AngSim appear when the first epoch ends."
