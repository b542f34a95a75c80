"""Adversarial distillation: a discriminator tells teacher outputs from student outputs, and the
student learns to fool it (Xu, Hsu & Huang 2017, "Training Shallow and Thin Networks for
Acceleration via Knowledge Distillation with Conditional Adversarial Networks", arXiv:1709.00513;
Belagiannis et al. 2018, "Adversarial Network Compression").

Each step, first the discriminator D (a small MLP on logits or probabilities) takes one step of its
OWN optimiser on ``BCE(D(t), 1) + BCE(D(s.detach()), 0)``; then the student gets
``adv_weight * BCE(D(s), 1)`` (non-saturating GAN loss) plus Hinton KD and CE. D's parameters are
switched off for gradients outside its own step, so the trainer's optimiser never holds or moves
them. Terms: ``kd``, ``ce``, ``adv`` and ``disc`` - the discriminator's loss, reported detached (it
adds no gradient) so its curve sits beside the others; ``disc_acc`` is D's accuracy per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdengine.losses.logits import kd_loss
from kdengine.core.knobs import param, temperature_knob, weight_knob
from kdengine.methods.base import Method, register


@dataclass
class AdversarialParams:
    adv_weight: float = weight_knob(0.1, "fooling weight",
                                    "Weight of the student's term for fooling the discriminator.")
    d_input: str = param("logits", choices=("logits", "probs"), label="discriminator input",
                         help="What the discriminator sees: raw logits or softmax probabilities.")
    d_hidden: int = param(64, min=4, max=4096, label="discriminator width")
    d_lr: float = param(1e-3, min=0.0, min_exclusive=True, max=1.0, label="discriminator lr")
    d_steps: int = param(1, min=1, max=10, label="discriminator steps per student step")
    T: float = temperature_knob(4.0)
    soft_weight: float = weight_knob(0.9, "soft weight")
    hard_weight: float = weight_knob(0.1, "hard weight")


def discriminator(n_classes: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_classes, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))


@register
class AdversarialKD(Method):
    name = "adversarial"
    Params = AdversarialParams
    title = "Adversarial KD (a discriminator tells teacher from student)"
    paper = "Xu, Hsu, Huang 2017, arXiv:1709.00513"
    formula = (r"w_{hard}\,CE(y, s) + w_{soft}\,T^2\,KL(\sigma(t/T)\,\|\,\sigma(s/T)) + "
               r"w_{adv}\,BCE\big(D(s), 1\big)")
    weight_knobs = {"kd": "soft_weight", "adv": "adv_weight", "ce": "hard_weight"}
    temperature = "T"
    lint_probe = "full"

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        g = torch.get_rng_state()
        torch.manual_seed(ctx.seed + 31337)   # D's init must not shift the student's RNG stream
        self.disc = discriminator(ctx.n_classes, params.d_hidden).to(ctx.device)
        torch.set_rng_state(g)
        self.disc.requires_grad_(False)
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=params.d_lr, betas=(0.5, 0.999))
        self._acc_sum = 0.0
        self._acc_n = 0

    def extra_modules(self):
        # Returned for device moves, train/eval mode and checkpoints. Its parameters have
        # requires_grad off whenever the trainer looks, so they never join the main optimiser.
        return [self.disc]

    def extra_state(self):
        # D's weights travel with extra_modules; its own optimiser's moments would be lost on resume
        return {"d_opt": self.d_opt.state_dict()}

    def load_extra_state(self, state):
        if state and "d_opt" in state:
            self.d_opt.load_state_dict(state["d_opt"])

    def _d_in(self, z: Tensor) -> Tensor:
        return F.softmax(z, -1) if self.params.d_input == "probs" else z

    def _disc_step(self, s: Tensor, t: Tensor) -> Tensor:
        self.disc.requires_grad_(True)
        try:
            for _ in range(self.params.d_steps):
                real, fake = self.disc(self._d_in(t)), self.disc(self._d_in(s.detach()))
                loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
                self.d_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.d_opt.step()
        finally:
            self.disc.requires_grad_(False)
            self.d_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            acc = ((real > 0).float().mean() + (fake < 0).float().mean()) / 2
        self._acc_sum += acc          # a device tensor: read back once per epoch, not per step
        self._acc_n += 1
        return loss.detach()

    def loss_terms(self, batch, step):
        p = self.params
        s = self.student(batch.x)
        t = self.teacher_logits(batch)
        d_loss = self._disc_step(s, t)
        fool = self.disc(self._d_in(s))      # D frozen here: gradients reach the student only
        terms = {"kd": kd_loss(s, t, p.T),
                 "adv": F.binary_cross_entropy_with_logits(fool, torch.ones_like(fool)),
                 "disc": d_loss}
        return self.with_hard_ce(terms, s, batch)

    def epoch_metrics(self, epoch):
        if not self._acc_n:
            return {}
        acc = float(self._acc_sum) / self._acc_n
        self._acc_sum, self._acc_n = 0.0, 0
        return {"disc_acc": acc}
