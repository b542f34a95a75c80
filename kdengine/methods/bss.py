"""BSS: distillation with boundary-supporting samples (Heo et al., AAAI 2019, arXiv:1805.05532).

Each step the student learns Hinton's soft targets on the batch, and also on adversarial samples that
sit near the teacher's decision boundary, found by attacking the teacher (``kdengine.analysis.boundaries``).
Reconstructed from the authors' ``train_BSS_distillation.py`` (T = 3, 64 attacked samples per batch,
80 epochs, epoch e counted from 1 to E)::

    loss = CE(y, s(x))
         + w_kd(e)  * KD_T(t(x), s(x))                   w_kd(e)  = 1 + 3 * max(0, 1 - e/E)
         + w_bss(e) * KD_T(t(x_bss), s(x_bss))           w_bss(e) = 2 * max(0, 1 - (4/3) e/E)

so the KD weight falls linearly from 4 to 1 and the BSS weight from 2 to 0 at three quarters of
training (here e/E is the fraction of steps done, see ``BSS.weights``). Their KD term is the soft
cross-entropy ``-sum p_t^T log p_s^T`` without the T^2 factor (same gradient as the KL form used
here); the ``t_squared`` switch adds it. Here the start and end
weights and the point where BSS stops are knobs, with the authors' values as defaults.

Base samples are those the teacher and the student both classify correctly, as in the authors'
final code (``base_samples``). The attack's rule defaults to DeepFool's step (which lands just past
the boundary whatever the logit scale); ``attack_rule = authors`` is their update, and brings their
step size 0.3 and eps 1e-4 unless ``attack_step`` / ``attack_eps`` are set.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import kdengine.analysis.boundaries as adv
from kdengine.losses.logits import kd_loss, kd_loss_unscaled
from kdengine.core.knobs import ConfigError, param, temperature_knob, weight_knob
from kdengine.methods.base import Method, register


@dataclass
class BSSParams:
    T: float = temperature_knob(3.0, help="Temperature of both KD terms (authors: 3).")
    hard_weight: float = weight_knob(1.0, "hard weight", "Weight of the cross-entropy on true labels.")
    kd_weight_start: float = param(4.0, min=0.0, max=100.0, step=0.5, label="soft weight (start)",
                                   help="KD weight at the first epoch; falls linearly to the end "
                                        "value (authors: 4 -> 1).")
    kd_weight_end: float = param(1.0, min=0.0, max=100.0, step=0.5, label="soft weight (end)")
    bss_weight: float = param(2.0, min=0.0, max=100.0, step=0.5, label="BSS weight (start)",
                              help="Weight of KD on the boundary samples at the first epoch; falls "
                                   "linearly to 0 (authors: 2).")
    bss_until: float = param(0.75, min=0.01, max=1.0, step=0.05, label="BSS ends at",
                             help="Fraction of training at which the BSS weight reaches 0 "
                                  "(authors: 3/4).")
    t_squared: bool = param(False, label="multiply soft terms by T²",
                            help="The authors' loss has no T² factor; switch on to match Hinton KD.")
    attack_size: int = param(64, min=1, max=4096, label="attacked samples per batch",
                             help="Base samples attacked per batch (authors: 64).")
    base_samples: str = param("both_correct", choices=adv.BASE_RULES, label="base samples",
                              help="Which samples may be attacked. both_correct: the teacher and "
                                   "the student both classify it correctly (the authors' final "
                                   "code). teacher_correct: the teacher alone (an earlier version; "
                                   "it attacks from the first step, when a fresh student is "
                                   "right almost nowhere).")
    attack_step: float | None = param(None, min=0.0, min_exclusive=True, max=10.0, step=0.05,
                                      label="attack step",
                                      help="eta in the update; empty = the rule's own (deepfool 1, "
                                           "authors 0.3). deepfool: the share of the linearised "
                                           "distance to the boundary covered per step; 1 aims "
                                           "just past it, 0.3 stops short (after 10 steps about 3% "
                                           "of the margin is left and almost no sample crosses).")
    attack_steps: int = param(10, min=1, max=200, label="attack steps",
                              help="Iterations of the boundary search (authors: 10).")
    attack_eps: float | None = param(None, min=0.0, max=10.0, step=0.01, label="attack epsilon",
                                     help="Margin (in logits) by which the step aims past the "
                                          "boundary; empty = the rule's own (authors 1e-4; "
                                          "deepfool 0.02, so curved boundaries are crossed).")
    attack_rule: str = param("deepfool", choices=adv.RULES, advanced=True,
                             help="deepfool: step = eta*(margin+eps)*g/|g|^2, a fraction eta of the "
                                  "linearised distance, with a safeguard against overshooting (it "
                                  "lands just past the boundary whatever the logit scale); "
                                  "authors: g/|g| and no safeguard, as in the official code, with "
                                  "its eta 0.3 and eps 1e-4 (the step's length depends on the "
                                  "logit scale).")
    attack_every: int = param(1, min=1, max=1000, advanced=True,
                              help="Attack every n-th step only (cheaper; the BSS term is 0 between).")
    probe_size: int = param(128, min=0, max=2048, advanced=True,
                            help="Test samples on which MagSim/AngSim are measured each epoch.")


@register
class BSS(Method):
    name = "bss"
    Params = BSSParams
    title = "BSS: boundary-supporting samples (adversarial samples near the teacher's boundary)"
    paper = "Heo, Lee, Yun, Choi, AAAI 2019, arXiv:1805.05532"
    formula = (r"w_{hard}\,CE(y, s) + w_{kd}(e)\,KL_T\big(t(x)\,\|\,s(x)\big) + "
               r"w_{bss}(e)\,KL_T\big(t(x_{bss})\,\|\,s(x_{bss})\big)")
    # kd and bss follow the schedule in weights() (no single knob); ce has a constant weight.
    weight_knobs = {"ce": "hard_weight"}
    temperature = "T"

    def setup(self, data) -> None:
        if data.kind == "text":
            raise ConfigError("method.name", "BSS attacks the input, which must be continuous; it "
                                             "does not apply to text tokens")
        self.kind = data.kind
        self.class_names = list(data.class_names)
        self.clamp = adv.input_range(data)
        self.mean, self.std = data.mean, data.std
        self.gen = torch.Generator(device=self.ctx.device).manual_seed(self.ctx.seed + 7)
        self.probe = None
        if self.params.probe_size > 0:
            self.probe = adv.SimilarityProbe(self.teachers[0], data.test.x, data.test.y,
                                             self.ctx.device, self.params.probe_size, self.ctx.seed,
                                             clamp=self.clamp)
        self._last = None

    # -- schedule ----------------------------------------------------------------------------------
    def weights(self, step: int) -> tuple[float, float]:
        """(KD weight, BSS weight) at a step. The authors update them once per epoch with e/E,
        e counted from 1; here e/E is the fraction of steps done, so the weights fall smoothly and a
        one-epoch run still attacks (with e = 1 = E the BSS weight would be 0 throughout)."""
        p = self.params
        frac = step / max(1, self.ctx.total_steps)
        w_kd = p.kd_weight_end + (p.kd_weight_start - p.kd_weight_end) * max(0.0, 1.0 - frac)
        w_bss = p.bss_weight * max(0.0, 1.0 - frac / p.bss_until)
        return w_kd, w_bss

    def _kd(self, s, t):
        p = self.params
        return kd_loss(s, t, p.T) if p.t_squared else kd_loss_unscaled(s, t, p.T)

    # -- the contract ------------------------------------------------------------------------------
    def loss_terms(self, batch, step):
        p = self.params
        s = self.student(batch.x)
        t = self.teacher_logits(batch)
        w_kd, w_bss = self.weights(step)
        terms = {"kd": w_kd * self._kd(s, t)}
        self.with_hard_ce(terms, s, batch)
        bss = s.new_zeros(())
        if w_bss > 0 and step % p.attack_every == 0:
            x_bss, t_bss = self._boundary_samples(batch, s, t)
            if x_bss is not None:
                s_bss = self.student(x_bss)
                bss = w_bss * self._kd(s_bss, t_bss)
                self._last["s_after"] = s_bss.detach()
        terms["bss"] = bss
        return terms

    def _boundary_samples(self, batch, s, t):
        """Attack the teacher from the batch's most useful base samples; returns (x_bss, t(x_bss))."""
        p = self.params
        idx = adv.select_base(t, s, batch.y, batch.labeled, p.attack_size, rule=p.base_samples)
        if len(idx) == 0:
            return None, None
        base = t[idx].argmax(1)
        target = adv.sample_targets(t[idx], base, self.gen)
        eta, eps = adv.rule_settings(p.attack_rule, p.attack_step, p.attack_eps)
        res = adv.boundary_attack(self.teachers[0], batch.x[idx], base, target, step=eta,
                                  steps=p.attack_steps, eps=eps, rule=p.attack_rule,
                                  clamp=self.clamp)
        # Keep references only (no copies); artifacts() converts the latest at epoch end.
        self._last = {"res": res, "s_before": s[idx].detach()}
        return res.x_adv, res.logits_after

    def epoch_metrics(self, epoch):
        if self.probe is None or len(self.probe) == 0:
            return {}
        return self.probe.measure(self.student)

    def artifacts(self):
        if not self._last or "res" not in self._last:
            return {}
        return {"bss": bss_artifact(self._last, self.kind, self.class_names, self.mean, self.std)}


GALLERY = 8      # image samples kept per epoch (each is a whole image twice)


def bss_artifact(last: dict, kind: str, class_names: list, mean=None, std=None) -> dict:
    """Plain-data view of the latest boundary samples for the Boundaries page.

    2-D: every sample's trajectory. Images: the first ``GALLERY`` base and boundary images in pixel
    range. Both: base/target classes and teacher/student probabilities before and after."""
    res = last["res"]
    soft = lambda z: _r(torch.softmax(z.float(), 1), 3)  # noqa: E731
    out = {"kind": kind, "class_names": class_names, "base": res.base.tolist(),
           "target": res.target.tolist(), "flipped": res.flipped.tolist(),
           "steps_taken": res.steps_taken.tolist(),
           "margin_start": _r(res.margins[0], 4),
           "margin_end": _r(res.margins[-1], 4),
           "t_before": soft(res.logits_before), "t_after": soft(res.logits_after),
           "s_before": soft(last["s_before"])}
    if "s_after" in last:
        out["s_after"] = soft(last["s_after"])
    if kind == "2d":
        # (B, S+1, 2): each sample's path from its base point to where it stopped
        out["traj"] = _r(res.traj.transpose(0, 1), 4)
    else:
        k = min(GALLERY, len(res.base))
        x0, x1 = res.traj[0][:k].cpu(), res.x_adv[:k].cpu()
        if mean is not None:
            x0, x1 = x0 * std + mean, x1 * std + mean
        for key in ("base", "target", "flipped", "steps_taken", "margin_start", "margin_end",
                    "t_before", "t_after", "s_before", "s_after"):
            if key in out:
                out[key] = out[key][:k]
        out["shape"] = list(x0.shape[1:])
        out["x_base"] = _r(x0, 3)
        out["x_bss"] = _r(x1, 3)
    return out


def _r(t, digits: int) -> list:
    """A tensor as nested lists of short floats (float64 first, so 0.053 stays 0.053 in JSON)."""
    return np.round(t.detach().cpu().double().numpy(), digits).tolist()
