"""The phenomena suite: each lesson's claim, measured over seeds on a CPU.

A lesson says "softening keeps the wrong classes' ranking", "KD beats the student alone with few
labels", "BSS brings the student's boundary closer to the teacher's"... Each such claim is a
:class:`Claim` here: a measurement (one small function per setting, run once per seed, returning a
dict of numbers), the number in that dict that is the claim's effect, the threshold the effect must
clear, and what the paper reported. ``run_claim`` repeats a measurement over seeds and says whether
the claim reproduced: the mean effect must clear the threshold by more than one standard deviation
over seeds, so a single lucky seed does not count. ``python bench/phenomena.py`` prints the table.

Seeds: a seed is the student's seed (initialisation and batch order); the data split and the
teacher stay fixed within a claim (the teacher is trained once and cached), except for the
temperature claim, whose seed is the data split and so also the teacher.

Every training run goes through an engine (:func:`suite_engine`: one worker thread, a store in
the data folder), as any run of the app does: the suite submits a config, waits, and reads the
summary from the run's snapshot and the student from the run's checkpoint. A config already trained
to the end is reused by its hash (kdengine/experiments/chains.py), and the TA of the TA-gap claim is
a run whose student teaches the next run (``teacher.source = "run"``).
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdengine.core.checkpoints import load_state_into, read_run_checkpoint
from kdengine.core.config import RunConfig
from kdengine.core.paths import data_root
from kdengine.core.presets import load_preset
from kdengine.core.store import Store
from kdengine.data import load_data
from kdengine.experiments.chains import ensure_run, run_teacher
from kdengine.losses.logits import dkd_per_sample, entropy
from kdengine.models.families import build_model, logits_of
from kdengine.run.engine import Engine

CPU = torch.device("cpu")

# The hierarchy setting (100 classes in 20 superclasses) where non-target knowledge is rich.
HIERARCHY = {"name": "hierarchy", "n_samples": 6000, "noise": 1.0, "hier_classes": 100,
             "hier_superclasses": 20}


# ---------------------------------------------------------------------------------------------
# running one config: submit to the engine, wait, read
# ---------------------------------------------------------------------------------------------
_engines: dict[Path, Engine] = {}        # the suite's own engines, one per data folder
_given: list[Engine] = []                # an engine passed to run_claims, while it runs


def suite_engine() -> Engine:
    """The engine the suite's runs go through: the one passed to :func:`run_claims`, else its own
    (one worker thread, a store in the data folder), made on first use in each data folder."""
    if _given:
        return _given[-1]
    root = data_root()
    if root not in _engines:
        _engines[root] = Engine(Store(root), max_workers=1)
    return _engines[root]


@dataclass
class Run:
    """A run of the suite, trained to the end: its summary, and its student on request."""
    run_id: str
    cfg: RunConfig
    summary: dict

    def student(self) -> nn.Module:
        """The trained student, from the run's checkpoint (written at its last epoch)."""
        ck = read_run_checkpoint(suite_engine().store.checkpoint_path(self.run_id))
        data = load_data(self.cfg.data)
        model = build_model(self.cfg.student, data.input_shape, data.n_classes)
        load_state_into(model, ck.state_dict, f"the student of run {self.run_id}")
        return model.eval()


def _config(base: RunConfig | str, overrides: dict) -> RunConfig:
    cfg = load_preset(base) if isinstance(base, str) else base
    return cfg.with_overrides({"train.checkpoint_every": 0, "train.baseline": False, **overrides})


def train_run(base: RunConfig | str, overrides: dict) -> Run:
    """Train one config to the end on the suite's engine (a finished run of the same config is
    reused) and return it."""
    cfg = _config(base, overrides)
    engine = suite_engine()
    rid, _reused = ensure_run(engine, cfg, owner="phenomena", name=f"phenomena: {cfg.name or 'run'}")
    return Run(rid, cfg, engine.snapshot(rid).summary)


def _acc(base, overrides) -> float:
    return train_run(base, overrides).summary["final_test_acc"]


def _teacher(base: RunConfig | str, overrides: dict | None = None):
    """(teacher, data) of a config: trained once and cached by the teacher's config."""
    from kdengine.teachers.sources import get_teacher
    cfg = _config(base, overrides or {})
    data = load_data(cfg.data)
    teacher, _info = get_teacher(cfg, data, CPU)
    return teacher, data


def _mlp(depth: int, width: int) -> dict:
    return {"arch": "mlp", "depth": depth, "width": width}


# ---------------------------------------------------------------------------------------------
# measurements: each takes a seed and returns plain numbers
# ---------------------------------------------------------------------------------------------
def measure_softening(seed: int) -> dict:
    """Teacher's test predictions at T = 1 and T = 4: mean entropy (nats) and the share of samples
    whose wrong classes keep their order (compared on log-probabilities, which do not underflow)."""
    teacher, data = _teacher("digits-quick", {"data.seed": seed})
    z = logits_of(teacher, data.test.x, CPU)
    h1 = entropy(F.softmax(z, -1)).mean().item()
    h4 = entropy(F.softmax(z / 4, -1)).mean().item()
    order1 = F.log_softmax(z, -1).argsort(-1)
    order4 = F.log_softmax(z / 4, -1).argsort(-1)
    kept = (order1 == order4).all(-1).float().mean().item()
    return {"entropy_gain": h4 - h1, "entropy_T1": h1, "entropy_T4": h4, "ranking_kept": kept}


def measure_few_labels(seed: int) -> dict:
    """digits, 50 labels: Hinton KD student vs the same student on the 50 labels alone (points)."""
    kd = _acc("digits-50-labels", {"train.seed": seed})
    alone = _acc("digits-50-labels-ce", {"train.seed": seed})
    return {"gain_pts": 100 * (kd - alone), "kd_acc": kd, "alone_acc": alone}


def measure_omitted(seed: int) -> dict:
    """digits without any 3 in the transfer set: class-3 test accuracy, then with the bias of class 3
    raised by the best shift (chosen on the test set, as Hinton et al. did)."""
    from kdengine.analysis.dark_knowledge import best_shift, omitted_report
    run = train_run("digits-omit-3", {"train.seed": seed})
    data = load_data(run.cfg.data)
    z = logits_of(run.student(), data.test.x, CPU)
    shifts = [i * 0.25 for i in range(41)]
    before = omitted_report(z, data.test.y, 3)
    shift = best_shift(z, data.test.y, 3, shifts)
    after = omitted_report(z, data.test.y, 3, shift)
    return {"class3_acc_pct": 100 * before["class_acc"],
            "shift_gain_pts": 100 * (after["class_acc"] - before["class_acc"]),
            "overall_gain_pts": 100 * (after["acc"] - before["acc"]), "shift": shift}


def measure_dkd_identity(seed: int) -> dict:
    """Largest |KL - (TCKD + (1 - p_t) NCKD)| over random logits at T = 1, 4 and 8."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for T in (1.0, 4.0, 8.0):
        s = 3 * torch.randn(512, 100, generator=g, dtype=torch.float64)
        t = 3 * torch.randn(512, 100, generator=g, dtype=torch.float64)
        y = torch.randint(0, 100, (512,), generator=g)
        per = dkd_per_sample(s, t, y, T)
        kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="none",
                      log_target=True).sum(-1)
        worst = max(worst, (kl - (per["tckd"] + (1 - per["p_t"]) * per["nckd"])).abs().max().item())
    return {"max_abs_error": worst}


def _bss_attack(preset: str, overrides: dict, seed: int, n: int = 256) -> dict:
    """The BSS training attack at the method's defaults, on n training samples the teacher gets
    right, toward targets drawn as the method draws them."""
    from kdengine.analysis import boundaries as adv
    from kdengine.methods.bss import BSSParams
    p = BSSParams()
    teacher, data = _teacher(preset, overrides)
    g = torch.Generator().manual_seed(seed)
    x = data.transfer.x[torch.randperm(len(data.transfer), generator=g)[:4 * n]]
    with torch.no_grad():
        t = teacher(x)
    base = t.argmax(1)
    x, t, base = x[:n], t[:n], base[:n]
    target = adv.sample_targets(t, base, g)
    eta, eps = adv.rule_settings(p.attack_rule, p.attack_step, p.attack_eps)
    res = adv.boundary_attack(teacher, x, base, target, step=eta, steps=p.attack_steps, eps=eps,
                              rule=p.attack_rule, clamp=adv.input_range(data))
    m0, m1 = res.margins[0], res.margins[-1]
    near = (m1.abs() < 0.1 * m0.abs()) | res.flipped
    probs = F.softmax(res.logits_after, 1)
    split = (probs.gather(1, base[:, None]) - probs.gather(1, target[:, None]))[:, 0].abs()
    return {"crossed": res.flipped.float().mean().item(), "near_or_crossed": near.float().mean().item(),
            "margin_left": (m1 / m0).median().item(), "prob_gap": split.median().item()}


def measure_bss_on_boundary(seed: int) -> dict:
    moons = _bss_attack("moons-bss", {}, seed)
    digits = _bss_attack("digits-quick", {}, seed)
    return {"moons_crossed": moons["crossed"], "moons_near": moons["near_or_crossed"],
            "digits_crossed": digits["crossed"], "digits_near": digits["near_or_crossed"],
            "moons_margin_left": moons["margin_left"]}


def measure_bss_boundary_similarity(seed: int) -> dict:
    """moons: BSS vs the same run with the BSS term off (Hinton-style KD only); MagSim and AngSim
    of the final student against the teacher (our reading of the paper's metrics)."""
    bss = train_run("moons-bss", {"train.seed": seed}).summary
    kd = train_run("moons-bss", {"train.seed": seed, "method.params.bss_weight": 0.0}).summary
    return {"magsim_gain": bss.get("final_magsim", math.nan) - kd.get("final_magsim", math.nan),
            "angsim_gain": bss.get("final_angsim", math.nan) - kd.get("final_angsim", math.nan),
            "agreement_gain_pts": 100 * (bss["final_agreement"] - kd["final_agreement"]),
            "acc_gain_pts": 100 * (bss["final_test_acc"] - kd["final_test_acc"])}


def _fitnet_base(seed: int) -> RunConfig:
    """digits, a CNN teacher (3 blocks of 32) and a thin, deeper CNN student (5 blocks of 4)."""
    return RunConfig.from_dict({
        "data": {"name": "digits"},
        "teacher": {"source": "train", "model": {"arch": "cnn", "depth": 3, "width": 32},
                    "epochs": 20},
        "student": {"arch": "cnn", "depth": 5, "width": 4},
        "method": {"name": "hinton", "params": {"T": 4.0, "soft_weight": 0.9, "hard_weight": 0.1}},
        "train": {"epochs": 20, "batch_size": 64, "lr": 0.003, "seed": seed}})


def measure_fitnet(seed: int) -> dict:
    """digits, thin CNN student: FitNets at the paper's defaults (2 epochs of hints from the middle
    stages, then KD) vs Hinton KD alone; mdistiller's recipe (CE + 100 x hint, one stage) vs the
    student alone (CE)."""
    base = _fitnet_base(seed)
    kd = _acc(base, {})
    fit = _acc(base, {"method": {"name": "fitnet", "params": {}}})
    mdist = _acc(base, {"method": {"name": "fitnet_mdistiller", "params": {}}})
    alone = _acc(base, {"method": {"name": "ce", "params": {}}})
    return {"hint_gain_pts": 100 * (fit - kd), "mdistiller_gain_pts": 100 * (mdist - alone),
            "fitnet_acc": fit, "kd_acc": kd, "mdistiller_acc": mdist, "alone_acc": alone}


def measure_specialists(seed: int) -> dict:
    """hierarchy, generalist MLP 2x256: test accuracy of generalist + specialists (the method's
    defaults: classes grouped by K-means on the covariance of the generalist's predictions, the
    specialists active where they hold the generalist's top class) vs the generalist alone. The
    seed is the specialists' (initialisation, batches, K-means start); one student epoch, since
    the student is not what the paper measured."""
    run = train_run(RunConfig.from_dict({
        "data": HIERARCHY, "teacher": {"source": "train", "model": _mlp(2, 256), "epochs": 30},
        "student": _mlp(1, 32), "method": {"name": "specialists", "params": {}},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.003, "seed": seed}}), {})
    gen, ens = run.summary["final_generalist_test_acc"], run.summary["final_ensemble_test_acc"]
    return {"ensemble_gain_pts": 100 * (ens - gen), "generalist_acc": gen, "ensemble_acc": ens}


def _ta_base(seed: int) -> RunConfig:
    return RunConfig.from_dict({
        "data": HIERARCHY,
        "teacher": {"source": "train", "model": _mlp(3, 512), "epochs": 30},
        "student": _mlp(1, 8),
        "method": {"name": "hinton", "params": {"T": 4.0, "soft_weight": 0.9, "hard_weight": 0.1}},
        "train": {"epochs": 20, "batch_size": 64, "lr": 0.003, "seed": seed}})


def measure_ta_gap(seed: int) -> dict:
    """hierarchy, teacher MLP 3x512 -> student MLP 1x8, directly or through a TA (MLP 1x64, itself
    distilled from the teacher); points of student test accuracy."""
    base = _ta_base(seed)
    direct = _acc(base, {})
    ta = train_run(base, {"student": _mlp(1, 64)})
    via = _acc(base, {"teacher": vars(run_teacher(ta.run_id, ta.cfg.student))})
    return {"ta_gain_pts": 100 * (via - direct), "direct_acc": direct, "via_ta_acc": via,
            "ta_acc": ta.summary["final_test_acc"],
            "teacher_acc": ta.summary.get("teacher_test_acc", math.nan)}


def measure_dkd_vs_kd(seed: int) -> dict:
    """hierarchy: DKD (alpha 1, beta 8, warm-up 5 of 20 epochs) vs Hinton KD, same teacher."""
    dkd = _acc("hierarchy-dkd", {"train.seed": seed})
    kd = _acc("hierarchy-dkd", {"train.seed": seed, "method": {"name": "hinton", "params": {}}})
    return {"dkd_gain_pts": 100 * (dkd - kd), "dkd_acc": dkd, "kd_acc": kd}


def measure_noisy_teacher(seed: int) -> dict:
    """digits, 50 labels: logit regression on a noisy teacher (sigma 0.8 on half of each batch)
    vs on the clean teacher (sigma 0, i.e. logit MSE)."""
    over = {"train.seed": seed, "method": {"name": "noisy_teacher", "params": {}}}
    noisy = _acc("digits-50-labels", over)
    clean = _acc("digits-50-labels", {**over, "method": {"name": "noisy_teacher",
                                                         "params": {"sigma": 0.0}}})
    return {"noise_gain_pts": 100 * (noisy - clean), "noisy_acc": noisy, "clean_acc": clean}


def measure_sobolev(seed: int) -> dict:
    """digits, a transfer set of about 70 images the teacher never saw: matching the teacher's
    input gradients as well as its outputs (Sobolev) vs its outputs only (derivative weight 0)."""
    over = {"train.seed": seed, "train.epochs": 60, "data.transfer": "heldout",
            "data.heldout_fraction": 0.05, "method": {"name": "sobolev", "params": {}}}
    sob = _acc("digits-50-labels", over)
    plain = _acc("digits-50-labels", {**over, "method": {"name": "sobolev",
                                                         "params": {"deriv_weight": 0.0}}})
    return {"sobolev_gain_pts": 100 * (sob - plain), "sobolev_acc": sob, "values_only_acc": plain}


def measure_dml(seed: int) -> dict:
    """hierarchy: a cohort of two MLP 1x32 peers learning from each other (DML) vs one trained
    alone with cross-entropy."""
    base = RunConfig.from_dict({"data": HIERARCHY, "teacher": {"source": "none"},
                                "student": _mlp(1, 32), "method": {"name": "ce"},
                                "train": {"epochs": 20, "batch_size": 64, "lr": 0.003}})
    alone = _acc(base, {"train.seed": seed})
    dml = _acc(base, {"train.seed": seed, "method": {"name": "dml", "params": {}}})
    return {"dml_gain_pts": 100 * (dml - alone), "dml_acc": dml, "alone_acc": alone}


def measure_distilbert(seed: int) -> dict:
    """text (multi-label): the DistilBERT student initialised from the teacher's layers vs from
    scratch, same losses; per-label test accuracy."""
    init = _acc("text-distilbert", {"train.seed": seed})
    scratch = _acc("text-distilbert", {"train.seed": seed,
                                       "method.params.init_from_teacher": False})
    return {"init_gain_pts": 100 * (init - scratch), "init_acc": init, "scratch_acc": scratch}


# ---------------------------------------------------------------------------------------------
# claims
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    id: str
    lesson: str               # lesson id (assets/lessons), "" for a method without a lesson
    text: str                 # the claim, as the lesson makes it
    measure: Callable[[int], dict]
    effect: str               # the key of measure()'s dict that is the effect
    unit: str
    threshold: float          # the effect must exceed this (or stay below it when below=True)
    paper: str                # what the paper reported, for the table
    below: bool = False

    def holds(self, mean: float, sd: float) -> bool:
        """Reproduced: the mean clears the threshold by more than one sd over seeds."""
        if mean != mean:   # NaN
            return False
        return mean + sd < self.threshold if self.below else mean - sd > self.threshold


CLAIMS: list[Claim] = [
    Claim("softening", "why-temperature", "T = 4 raises the teacher's entropy over T = 1",
          measure_softening, "entropy_gain", "nats", 0.0,
          "Hinton 2015: soft targets carry the similarity structure at high T (qualitative)"),
    Claim("ranking_kept", "why-temperature", "softening keeps the wrong classes' ranking",
          measure_softening, "ranking_kept", "share of samples", 0.999,
          "exact by construction (softmax of z/T is monotone in z)"),
    Claim("few_labels", "few-labels", "with 50 labels, KD beats the student alone (digits)",
          measure_few_labels, "gain_pts", "pts", 0.0,
          "Hinton 2015 Table 5 (speech, 3% of the data): 44.5% alone -> 57.0% with soft targets"),
    Claim("omitted_class", "dark-knowledge", "a student that never saw a 3 reads most 3s",
          measure_omitted, "class3_acc_pct", "% of test 3s", 50.0,
          "Hinton 2015 s.3 (MNIST): 877 of 1010 threes right (86.8%) before the bias shift"),
    Claim("bias_shift", "dark-knowledge", "raising class 3's bias fixes most of its errors",
          measure_omitted, "shift_gain_pts", "pts on 3s", 0.0,
          "Hinton 2015 s.3: +3.5 on the bias: 3s 86.8% -> 98.6% right"),
    Claim("dkd_identity", "decoupling", "KD = TCKD + (1 - p_t) NCKD exactly",
          measure_dkd_identity, "max_abs_error", "max abs error", 1e-9,
          "Zhao et al. 2022 Eq. 1: an identity", below=True),
    Claim("dkd_vs_kd", "decoupling", "DKD beats KD where non-target knowledge matters (hierarchy)",
          measure_dkd_vs_kd, "dkd_gain_pts", "pts", 0.0,
          "Zhao et al. 2022 Table 1 (CIFAR-100, ResNet32x4 -> ResNet8x4): KD 73.33, DKD 76.32"),
    Claim("bss_on_boundary", "boundary-samples",
          "the BSS attack carries samples onto the teacher's boundary (moons)",
          measure_bss_on_boundary, "moons_near", "share within 10% of the margin or across", 0.9,
          "Heo et al. 2019 Fig. 1-2: samples moved to the boundary (qualitative)"),
    Claim("bss_crossed", "boundary-samples",
          "the BSS attack's samples cross the teacher's boundary (digits)",
          measure_bss_on_boundary, "digits_crossed", "share crossed", 0.9,
          "Heo et al. 2019: the attack stops when the prediction flips"),
    Claim("bss_similarity", "boundary-samples",
          "BSS brings the student's boundary closer to the teacher's than KD alone (MagSim)",
          measure_bss_boundary_similarity, "magsim_gain", "MagSim", 0.0,
          "Heo et al. 2019: BSS has higher MagSim and AngSim than KD (CIFAR-10)"),
    Claim("fitnet_hints", "", "hints, then KD (FitNets), beat KD alone for a thin student (digits)",
          measure_fitnet, "hint_gain_pts", "pts", 0.0,
          "Romero et al. 2015 (CIFAR-10, thin deep students): training from hints first beats "
          "KD alone (qualitative here)"),
    Claim("fitnet_mdistiller", "", "hints as mdistiller trains them beat the student alone (digits)",
          measure_fitnet, "mdistiller_gain_pts", "pts", 0.0,
          "Zhao et al. 2022 Table 1 (CIFAR-100, ResNet32x4 -> ResNet8x4, mdistiller): student "
          "72.50, FitNet 73.50"),
    Claim("specialists", "", "specialists on top of the generalist beat it alone (hierarchy)",
          measure_specialists, "ensemble_gain_pts", "pts", 0.0,
          "Hinton et al. 2015 Table 4 (JFT, 61 specialists): 25.0% -> 26.1% test accuracy"),
    Claim("ta_gap", "teacher-too-big", "a TA beats direct KD at a large capacity gap (hierarchy)",
          measure_ta_gap, "ta_gain_pts", "pts", 0.0,
          "Mirzadeh et al. 2020 (CIFAR-10, 2-layer CNN student): 72.57 direct -> 73.51 via a TA"),
    Claim("distilbert_init", "transformers",
          "a DistilBERT student started from the teacher's layers beats one started from scratch",
          measure_distilbert, "init_gain_pts", "pts", 0.0,
          "Sanh et al. 2019 (ablation): random init instead of the teacher's layers costs 3.69 "
          "GLUE points"),
    Claim("noisy_teacher", "", "a noisy teacher regularises the student with few labels",
          measure_noisy_teacher, "noise_gain_pts", "pts", 0.0,
          "Sau & Balasubramanian 2016: noise on the teacher's logits improves the student"),
    Claim("sobolev", "", "matching input gradients helps with a small transfer set",
          measure_sobolev, "sobolev_gain_pts", "pts", 0.0,
          "Czarnecki et al. 2017: Sobolev training needs fewer samples for the same accuracy"),
    Claim("dml", "", "two peers learning from each other beat one alone (hierarchy)",
          measure_dml, "dml_gain_pts", "pts", 0.0,
          "Zhang et al. 2018 Table 1 (CIFAR-100, ResNet-32): 68.99 alone -> 71.19 with DML"),
]


def claims_by_id() -> dict[str, Claim]:
    return {c.id: c for c in CLAIMS}


@dataclass
class ClaimResult:
    claim: Claim
    values: list[float]        # the effect per seed
    details: list[dict]        # measure()'s whole dict per seed
    seconds: float             # wall time measuring this claim (shared measurements count once)
    cpu_seconds: float         # CPU time of the same (see cpu_seconds())

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def reproduced(self) -> bool:
        return self.claim.holds(self.mean, self.sd)


def cpu_seconds() -> float:
    """CPU time of this process, all its threads (torch's included), plus any children it waited
    for. On a shared machine wall time grows with other jobs' load; this does not, so the suite's
    time budget is judged on it."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_claims(claims: list[Claim], seeds: list[int],
               on_step: Callable[[str, int], None] | None = None,
               on_result: Callable[[ClaimResult], None] | None = None,
               engine: Engine | None = None) -> list[ClaimResult]:
    """Measure each claim for each seed. Claims sharing a measurement reuse it (its time is
    charged to the first). ``on_step(claim_id, seed)`` is called after each measurement,
    ``on_result`` with each claim's result as soon as it is complete. The runs go through
    ``engine`` (default: :func:`suite_engine`'s own)."""
    if engine is not None:
        _given.append(engine)
    try:
        return _run_claims(claims, seeds, on_step, on_result)
    finally:
        if engine is not None:
            _given.remove(engine)


def _run_claims(claims, seeds, on_step, on_result) -> list[ClaimResult]:
    done: dict[tuple, dict] = {}
    results = []
    for claim in claims:
        details, t0, c0 = [], time.perf_counter(), cpu_seconds()
        for seed in seeds:
            key = (claim.measure, seed)
            if key not in done:
                torch.set_num_threads(1)
                done[key] = claim.measure(seed)
            details.append(done[key])
            if on_step:
                on_step(claim.id, seed)
        results.append(ClaimResult(claim, [float(d[claim.effect]) for d in details], details,
                                   time.perf_counter() - t0, cpu_seconds() - c0))
        if on_result:
            on_result(results[-1])
    return results


def format_effect(r: ClaimResult) -> str:
    if abs(r.mean) < 1e-3 and r.mean != 0:
        return f"{r.mean:.1e} ± {r.sd:.1e}"
    return f"{r.mean:+.3g} ± {r.sd:.2g}"


def markdown_table(results: list[ClaimResult]) -> str:
    rows = ["| claim | lesson | measured effect (mean ± sd) | unit | reproduced | CPU s | wall s | "
            "paper |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.claim
        rows.append(f"| {c.text} | {c.lesson or '—'} | {format_effect(r)} | {c.unit} | "
                    f"{'yes' if r.reproduced else 'no'} | {r.cpu_seconds:.0f} | {r.seconds:.0f} | "
                    f"{c.paper} |")
    return "\n".join(rows)
