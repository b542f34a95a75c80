"""The method contract: what a distillation method declares and what the trainer does with it.

A method owns one student (plus any helper modules it trains: regressors, a cohort, a discriminator)
and sees the teachers read-only. Each step the trainer calls ``loss_terms(batch, step)``, which
returns the UNWEIGHTED named terms of the method's paper ("ce", "kd", "tckd", ...). The class
declares which of its ``Params`` knobs weights each term (``weight_knobs``), which terms need labels
(``label_terms``) and which knob is the temperature (``temperature``). The trainer minimises the sum
of the terms times their weights (:meth:`Method.weigh`) and records the weighted terms: the charts
plot what the optimiser sees, under the stable term names, so a new method needs no page code. On a
transfer set without labels the trainer sets the label terms' weights to 0. The linter, the
vectorised backend and the pages read the same declarations through the contract's own readers
(:meth:`Method.temperature_of`, :meth:`Method.label_weight_knobs`, ...), on a class they get from
the registry (``get_method_class``).

Stacked students (``supports_stacking``): the vectorised backend trains a sweep's cells as one
student whose forward returns logits with a leading student axis, ``[S, B, C]``. The weight knobs and
the knobs in ``stack_knobs`` then hold one value per student as ``[S, 1, 1]`` tensors, and every
term comes back as ``[S]``, one value per student; the losses in :mod:`kdengine.losses` broadcast
that way, so most methods stack without code of their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdengine.core.events import Emit, Notice, Phase, no_emit
from kdengine.core.registry import get_method_class, method_names, register  # noqa: F401
from kdengine.losses.logits import per_student

if TYPE_CHECKING:
    from kdengine.core.config import RunConfig  # noqa: F401  (TrainContext.config)


@dataclass
class NoParams:
    pass


@dataclass
class Batch:
    """One training step's data. ``labeled`` marks samples whose label the student may use."""
    x: Tensor
    y: Tensor
    labeled: Tensor
    # The samples' rows in the transfer set: for methods that precompute something per sample in
    # setup() (sobolev's teacher Jacobians, specialists' combined targets).
    idx: Tensor
    # Teacher logits for this batch, one tensor per teacher, when the trainer could cache them
    # (fixed, un-augmented transfer set); otherwise None and the method runs the teachers itself.
    teacher_logits: list[Tensor] | None = None


def _never() -> bool:
    return False


@dataclass
class TrainContext:
    """What a method may know about the run it is part of."""
    steps_per_epoch: int
    epochs: int
    n_classes: int
    input_shape: tuple
    device: torch.device
    data_kind: str = "image"          # "2d", "image" or "text"
    seed: int = 0
    # The run's whole config, for methods that build models of their own (peers, extra teachers,
    # specialists) or pick defaults by model family. None for methods built outside a run.
    config: RunConfig | None = None
    # Progress events (Phase, Notice) for the pages, as the trainer emits them.
    emit: Emit = no_emit
    # True once the user pressed Stop: long work in setup() (training teachers) checks it.
    should_stop: Callable[[], bool] = _never

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def epoch_of(self, step: int) -> float:
        return step / max(1, self.steps_per_epoch)

    def notice(self, message: str) -> None:
        """A one-line notice shown with the run."""
        self.emit(Notice(message))

    def phase(self, phase: str, message: str, progress: float) -> None:
        """A progress line for long work before training (e.g. training specialists)."""
        self.emit(Phase(phase, message, progress))


class Method:
    name: ClassVar[str] = ""
    """Registry name: what ``method.name`` in a config and the CLI select."""
    Params: ClassVar[type] = NoParams
    """Dataclass of the method's knobs, built from ``param`` fields (ranges, help, widgets)."""
    title: ClassVar[str] = ""
    """One-line description shown in the method picker and ``python -m kdengine methods``."""
    paper: ClassVar[str] = ""
    """Where the method comes from (authors, year, arXiv id)."""
    formula: ClassVar[str] = ""
    """The loss as LaTeX, in the weight knobs' names (the Lab's code panel, the exported notebook)."""
    needs_teacher: ClassVar[bool] = True
    """False for methods that train without a pre-trained teacher (ce, dml)."""
    supports_multilabel: ClassVar[bool] = False
    """True when the losses handle multi-hot targets (the text task)."""
    requires_arch: ClassVar[tuple[str, ...]] = ()
    """Student families the method works with (it reads their hidden states); empty = any."""
    weight_knobs: ClassVar[dict[str, str]] = {}
    """Term name -> the ``Params`` knob that weights it; a term not listed has weight 1."""
    label_terms: ClassVar[tuple[str, ...]] = ("ce",)
    """Terms that use the true labels: their weight is set to 0 on a transfer set without labels."""
    temperature: ClassVar[str | None] = None
    """Name of the ``Params`` knob that is the softmax temperature, or None."""
    lint_probe: ClassVar[str | None] = None
    """How the linter's one-step probe treats setup(): "full", "no_setup" or "skip"; None = "full"
    when the method has no setup() of its own, else "skip"."""
    cache_teacher_logits: bool = True
    """Whether the trainer may precompute the teachers' logits on the fixed transfer set (a method
    that runs the teacher every step anyway says False; an instance may change it in setup())."""
    supports_stacking: ClassVar[bool] = False
    """True when ``loss_terms`` also takes stacked students (logits ``[S, B, C]``, the weight knobs
    and ``stack_knobs`` as ``[S, 1, 1]`` tensors) and returns ``[S]`` terms, each the one that
    student would get alone: a vectorised sweep then trains its cells in one pass."""
    stack_knobs: ClassVar[tuple[str, ...]] = ()
    """Knobs besides the weight knobs that may differ between stacked students (e.g. ("T",));
    stacked students share every other knob (cells that differ there train in separate passes)."""

    def __init__(self, student: nn.Module, teachers: list[nn.Module], params: Any, ctx: TrainContext):
        self.student = student
        self.teachers = list(teachers)      # a plain list: never registered, never optimised
        self.params = params
        self.ctx = ctx
        for t in self.teachers:
            t.eval()           # the whole module, whatever its parts were left in
            t.requires_grad_(False)
        # Term -> weight, from the declared knobs; the trainer may zero the label terms' weights.
        self._set_weights(self.weights_of(params))

    # ---- reading the declarations (for the trainer, the linter, the sweeps and the pages) --------
    @staticmethod
    def knob_value(params: Any, knob: str, default: Any = None) -> Any:
        """A knob of a Params dataclass, or of a plain dict of knobs (a stored config)."""
        if isinstance(params, dict):
            return params.get(knob, default)
        return getattr(params, knob, default)

    @classmethod
    def temperature_of(cls, params: Any) -> float | None:
        """The temperature these knobs (a Params or a plain dict) train at, or None when the method
        has no temperature knob."""
        T = cls.knob_value(params, cls.temperature) if cls.temperature else None
        return float(T) if isinstance(T, (int, float)) and not isinstance(T, bool) else None

    @classmethod
    def label_weight_knobs(cls) -> tuple[str, ...]:
        """The knobs that weight the terms needing labels (e.g. ("hard_weight",))."""
        return tuple(dict.fromkeys(cls.weight_knobs[t] for t in cls.label_terms
                                   if t in cls.weight_knobs))

    @classmethod
    def soft_weight_knobs(cls) -> tuple[str, ...]:
        """The knobs that weight the terms not needing labels (soft targets, features, ...)."""
        return tuple(dict.fromkeys(k for t, k in cls.weight_knobs.items() if t not in cls.label_terms))

    @classmethod
    def weights_of(cls, params: Any) -> dict[str, float | Tensor]:
        """The declared weight of each weighted term for these knobs (``[S]`` tensors, one weight
        per student, when the knobs are stacked)."""
        return {term: _weight(cls.knob_value(params, knob)) for term, knob in cls.weight_knobs.items()}

    # ---- the weights of this run -----------------------------------------------------------------
    def _set_weights(self, weights: dict[str, float | Tensor]) -> None:
        self.term_weights = weights
        # wants() is asked every step: decided here, so stacked weights cost no host sync per step
        self._wanted = {t: _positive(w) for t, w in weights.items()}

    def wants(self, term: str) -> bool:
        """False when the term's weight is 0 (for every stacked student): the method may skip
        computing it (and it is then not recorded)."""
        return self._wanted.get(term, True)

    def with_hard_ce(self, terms: dict[str, Tensor], logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        """``terms`` plus the hard-label cross-entropy as ``"ce"``, unless its weight is 0."""
        if self.wants("ce"):
            terms["ce"] = self.hard_ce(logits, batch)
        return terms

    def zero_label_terms(self) -> list[str]:
        """Set the weights of the label terms to 0 (a transfer set without labels); returns the
        knobs that were above 0, for the notice."""
        was = [self.weight_knobs[t] for t in self.label_terms
               if t in self.weight_knobs and _positive(self.term_weights.get(t, 0.0))]
        self._set_weights({**self.term_weights, **{t: 0.0 for t in self.label_terms}})
        return list(dict.fromkeys(was))

    def weigh(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """The terms times their weights (a term not declared has weight 1): what the optimiser
        sums and the charts show."""
        w = self.term_weights
        return {k: v * w[k] if k in w else v for k, v in terms.items()}

    # ---- hooks the trainer calls ---------------------------------------------------------------
    def setup(self, data: Any) -> None:
        """Called once before training (e.g. to train specialists). ``data`` is the DataBundle."""

    def extra_modules(self) -> list[nn.Module]:
        """Trainable modules besides the student whose parameters join the optimiser."""
        return []

    def extra_state(self) -> dict[str, Any]:
        """What the method trains outside the trainer's optimiser and ``extra_modules`` (e.g.
        modules with an optimiser of their own, and its state): kept in the run's checkpoint (tensors
        and plain data) and given back to ``load_extra_state`` when the run resumes."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore ``extra_state`` from a checkpoint (after ``setup``)."""

    def loss_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """The step's loss terms by name, UNWEIGHTED (scalar tensors, or ``[S]`` for stacked
        students; schedules such as a warm-up are the method's own). The trainer applies
        ``weight_knobs`` (:meth:`weigh`) and backpropagates the sum."""
        raise NotImplementedError

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """Extra scalar metrics recorded at the end of each epoch (e.g. MagSim)."""
        return {}

    def artifacts(self) -> dict[str, Any]:
        """Plain data (lists / numpy) for visualisations, e.g. the latest BSS samples."""
        return {}

    def train(self, mode: bool = True) -> None:
        self.student.train(mode)
        for m in self.extra_modules():
            m.train(mode)
        for t in self.teachers:
            if t.training:     # eval() from __init__ holds: a teacher is never trained here
                t.eval()

    # ---- helpers for subclasses ----------------------------------------------------------------
    def teacher_logits(self, batch: Batch, i: int = 0) -> Tensor:
        """Teacher i's logits for the batch: cached when available, else computed in eval/no_grad."""
        if batch.teacher_logits is not None:
            return batch.teacher_logits[i]
        return self.run_teacher(self.teachers[i], batch.x)

    @staticmethod
    def run_teacher(teacher: nn.Module, x: Tensor) -> Tensor:
        teacher.eval()
        with torch.no_grad():
            return teacher(x).float()

    def hard_ce(self, logits: Tensor, batch: Batch) -> Tensor:
        """Cross-entropy with the true labels, averaged over the batch's labelled samples (0 when
        it has none). Logits ``[B, C]``, or ``[S, B, C]`` for stacked students (then ``[S]``)."""
        if batch.y.dim() == 2:   # multi-hot targets (text data): per-label BCE, multilabel.py
            from kdengine.losses.multilabel import hard_loss
            return hard_loss(logits, batch.y, batch.labeled)
        y = batch.y.clamp_min(0).expand(logits.shape[:-1])     # an unlabelled sample's y is -1
        # -log p_y per sample (a stack's [S, B, C] logits as S * B rows)
        ce = F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none").view(y.shape)
        # a masked mean, not ce[labeled]: no host sync to learn how many samples are labelled
        lab = batch.labeled.to(ce.dtype)
        return (ce * lab).sum(-1) / lab.sum().clamp_min(1)

    def progress(self, step: int) -> float:
        """Training progress in [0, 1]."""
        return min(1.0, step / max(1, self.ctx.total_steps))


def temperature_of(cfg) -> float | None:
    """The temperature a config's method trains at (its declared knob), or None when it has none
    or the method is unknown. Takes a RunConfig or its ``to_dict()`` form (a stored run)."""
    method = cfg["method"] if isinstance(cfg, dict) else cfg.method
    name, params = (method.get("name"), method.get("params") or {}) if isinstance(method, dict) \
        else (method.name, method.params)
    try:
        return get_method_class(name).temperature_of(params)
    except KeyError:
        return None


def _weight(value: Any) -> float | Tensor:
    """A weight knob's value as a factor on a term: a number, or ``[S]`` for stacked knobs."""
    return per_student(value) if isinstance(value, Tensor) else float(value)


def _positive(value: Any) -> bool:
    """Whether a knob is above 0 (for any stacked student)."""
    return bool((value > 0).any()) if isinstance(value, Tensor) else value > 0
