"""One training run: data -> teacher (trained, cached or loaded) -> optional baseline -> student.

The trainer knows nothing about threads or UIs: it reports through ``emit(event)`` and asks a
``Control`` whether to pause or stop. A step is the textbook one (the method's terms, their weighted
sum, backward, optimiser step); its loss terms stay on the device and are read back once every
``log_every`` steps (one host sync per window, not per step), where the NaN check also happens, still
naming the exact step and term.

The loop's parts are shared with stacked students (:mod:`kdengine.run.group`, a
subclass): ``train_step`` takes the method's terms whatever their shape (a scalar each, or ``[S]``,
one per stacked student), ``read_window`` returns one metrics dict per student, ``evaluate_each``
one evaluation per student, and ``_record`` is where they leave the trainer.
"""
from __future__ import annotations

import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from kdengine.core.config import CONV_ARCHS, RunConfig
from kdengine.core.knobs import field_specs
from kdengine.data.datasets import DataBundle, load_data
from kdengine.methods import Batch, TrainContext, get_method_class
from kdengine.models import build_model, count_params, logits_of, model_label
from kdengine.run.evaluation import EvalSet, evaluate_each
from kdengine.teachers.student_alone import baseline_accuracy, teacher_gap_warning
from kdengine.teachers.fitting import bf16_autocast
from kdengine.teachers.sources import get_teacher
from kdengine.core.checkpoints import RunCheckpoint
from kdengine.core.events import Artifacts, Checkpoint, Emit, Metrics, Notice, Phase, no_emit
from kdengine.core.optim import make_optimizer, make_scheduler
from kdengine.run.control import Control

# Where a teacher came from, in a run's notice ("Teacher MLP 2x128 (trained now): ...").
SOURCE_WORDS = {"train": "trained now", "checkpoint": "from a checkpoint",
                "run": "a stored run's student", "shipped": "shipped with the app"}


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf."""


def choose_device(pref: str) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda was asked for but no CUDA GPU is available")
        return torch.device("cuda")
    return torch.device("cpu")


def versions() -> dict:
    import sys
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(terse=True)}


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


@dataclass
class MonitorSetup:
    """What a per-epoch monitor may look at when a run starts."""
    cfg: RunConfig
    data: DataBundle
    teacher: nn.Module | None
    device: torch.device
    method: str


class Monitor:
    """Something measured at every epoch end, whatever the method (boundary grids, MagSim/AngSim,
    the omitted class's accuracy). The trainer knows only this interface; the engine chooses which
    monitors a run gets (:mod:`kdengine.run.monitors`)."""

    def metrics(self, student: nn.Module, already: dict[str, float]) -> dict[str, float]:
        """Scalars recorded with the epoch's evaluation; ``already`` holds what is measured so far."""
        return {}

    def artifacts(self, student: nn.Module, epoch: int) -> dict:
        """Plain data (lists, numbers) for the pages, sent as one "artifacts" event per epoch."""
        return {}


MonitorFactory = Callable[[MonitorSetup], "Monitor | None"]


class Trainer:
    """Runs one config. ``run()`` returns the summary dict; events go to ``emit``.

    It writes no files: its checkpoints leave as :class:`~kdengine.core.events.Checkpoint` events
    (the engine's recorder stores them; ``checkpoints=False`` sends none), and a run that continues
    is given its last checkpoint's bytes as ``resume_from``. Built in one place,
    :func:`kdengine.run.units.make_trainer`."""

    def __init__(self, cfg: RunConfig, emit: Emit | None = None, control: Control | None = None,
                 resume_from: bytes | None = None, monitors: Sequence[MonitorFactory] = (),
                 checkpoints: bool = True):
        # A copy: the run must not see later edits to the caller's object. Validated once, where
        # the run was submitted; validated() only re-checks a config edited since.
        self.cfg = cfg.copy().validated()
        self.emit = emit or no_emit
        self.control = control or Control()
        self.resume_from = resume_from
        self.checkpoints = checkpoints
        self.monitor_factories = list(monitors)
        self.device = choose_device(self.cfg.train.device)
        self.summary: dict[str, Any] = {}
        self.method = None

    # -- small emit helpers ----------------------------------------------------------------------
    def _phase(self, phase: str, message: str, frac: float = 0.0):
        self.emit(Phase(phase, message, frac))

    def _notice(self, message: str):
        self.emit(Notice(message))

    def _metrics(self, step: int, epoch: float, values: dict[str, float]):
        self.emit(Metrics(step, epoch, values))

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        torch.set_num_threads(1) if self.device.type == "cpu" else None
        t0 = time.perf_counter()
        self._phase("data", f"loading {cfg.data.name}")
        data = load_data(cfg.data)
        for note in data.notes:
            self._notice(note)
        method_cls = get_method_class(cfg.method.name)
        params = cfg.method.params             # the method's typed Params (validated)

        teachers, t_test_logits = [], None
        if method_cls.needs_teacher:
            teacher, info = get_teacher(cfg, data, self.device,
                                        progress=lambda f, m: self._phase("teacher", f"training "
                                                                          f"teacher: {m}", f),
                                        should_stop=lambda: self.control.stopped)
            self.summary.update(teacher_label=info["label"], teacher_test_acc=info["test_acc"],
                                teacher_params=count_params(teacher), teacher_cached=info["cached"])
            how = "cached" if info["cached"] else SOURCE_WORDS.get(info["source"], info["source"])
            self._notice(f"Teacher {info['label']} ({how}): test accuracy {info['test_acc']:.2%}")
            if info.get("warning"):
                self._notice(info["warning"])
            teachers = [teacher]
            t_test_logits = logits_of(teacher, data.test.x, self.device)
            self._metrics(0, 0.0, {"teacher_test_acc": info["test_acc"]})
        summary = self._train_student(data, method_cls, params, teachers, t_test_logits, t0)
        if cfg.train.baseline:        # after the student: its live curve never waits for this
            self._baseline(data)
        return summary

    def _baseline(self, data: DataBundle):
        """Student alone on the same labelled data (cached), so the run shows what KD added."""
        try:
            acc, cached = baseline_accuracy(
                self.cfg, data, self.device,
                lambda f, m: self._phase("baseline", f"student alone (for comparison): {m}", f),
                should_stop=lambda: self.control.stopped)
        except InterruptedError:
            self._notice("Student alone: not trained (stopped); the distilled student is complete.")
            return
        self.summary["baseline_test_acc"] = acc
        self._metrics(0, 0.0, {"baseline_test_acc": acc})
        self._notice(f"Student alone ({'cached' if cached else 'trained now'}): test accuracy "
                     f"{acc:.2%}")
        warn = teacher_gap_warning(self.summary.get("teacher_test_acc"), acc)
        if warn:
            self._notice(warn)

    def _train_student(self, data, method_cls, params, teachers, t_test_logits, t0) -> dict:
        cfg, dev = self.cfg, self.device
        tc = cfg.train
        student = self._build_student(data)
        layout = memory_format(tc.channels_last, cfg.student.arch, data.input_shape, dev)
        if layout is torch.channels_last:
            # the student only: a teacher may be shared with other runs; convs accept either layout
            student.to(memory_format=layout)
        n = len(data.transfer)
        bs = min(tc.batch_size, n)
        steps_per_epoch = max(1, n // bs)   # drop the last partial batch: fixed shapes, fewer syncs
        ctx = TrainContext(steps_per_epoch=steps_per_epoch, epochs=tc.epochs,
                           n_classes=data.n_classes, input_shape=data.input_shape, device=dev,
                           data_kind=data.kind, seed=tc.seed, config=cfg, emit=self.emit,
                           should_stop=lambda: self.control.stopped)
        method = method_cls(student, teachers, params, ctx)
        self.method = method
        if data.n_labeled == 0:     # no labels: the terms that need them get weight 0
            zeroed = method.zero_label_terms()
            if zeroed:      # by the knobs' labels, as the Lab shows them
                labels = {f["name"]: f.get("label") or f["name"].replace("_", " ")
                          for f in field_specs(method_cls.Params)}
                self._notice("No labels in the transfer set: "
                             + ", ".join(labels.get(z, z) for z in zeroed) + " forced to 0.")
        self._phase("setup", f"preparing {method_cls.name}")
        method.setup(data)
        extra = [m.to(dev) for m in method.extra_modules()]
        trainable = [p for m in [student, *extra] for p in m.parameters() if p.requires_grad]
        opt = make_optimizer(tc, trainable)
        sched = make_scheduler(tc, opt, steps_per_epoch * tc.epochs)
        self.summary.update(student_label=model_label(cfg.student), student_params=count_params(student),
                            method=method_cls.name)

        # The whole transfer set lives on the device: a step is an index, never a host copy. A small
        # set is put in each epoch's order once, and a step slices it (see EPOCH_COPY_BYTES).
        X, Y = data.transfer.x.to(dev, memory_format=layout), data.transfer.y.to(dev)
        L = data.labeled.to(dev)
        per_epoch = X.nbytes <= EPOCH_COPY_BYTES
        t_logits = None
        if teachers and method.cache_teacher_logits:
            # The transfer set is fixed and not augmented: the teachers' logits on it, once per run.
            # method.teachers: a method may add teachers in setup() (multi_teacher).
            t_logits = [logits_of(t, X, dev) for t in method.teachers]
        if tc.compile:
            student.compile()       # in place: the state_dict keys (checkpoints) stay the same
        gen = torch.Generator().manual_seed(tc.seed)
        start_epoch = 0
        if self.resume_from is not None:
            start_epoch = self._restore(student, extra, opt, sched, gen)
            self._notice(f"Resumed from the checkpoint after epoch {start_epoch}.")

        # bf16 autocast on CUDA; on the CPU only when asked for by name (device cpu), for tests
        amp = bf16_autocast(tc, dev)
        total_steps = steps_per_epoch * tc.epochs
        step = start_epoch * steps_per_epoch
        window: dict[str, list] = {}
        win_start = step
        t_start = time.perf_counter()
        step0 = step
        self._phase("student", f"training student with {method_cls.name}", 0.0)
        setup = MonitorSetup(cfg, data, teachers[0] if teachers else None, dev, method_cls.name)
        monitors = [m for m in (make(setup) for make in self.monitor_factories) if m is not None]
        eval_set = EvalSet.of(data, dev, transfer=(X, Y))     # on the device once, not per epoch
        method.train(True)
        ctl = self.control
        for epoch in range(start_epoch, tc.epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            if per_epoch:   # the same batches: X[perm][i*bs:(i+1)*bs] is X[perm[i*bs:(i+1)*bs]]
                # index_select: X[perm]'s rows, faster (advanced indexing takes a general path),
                # but its result is contiguous: channels_last images keep X[perm]
                xs = X[perm] if layout is torch.channels_last else X.index_select(0, perm)
                ys, ls = Y.index_select(0, perm), L.index_select(0, perm)
                ts = None if t_logits is None else [t.index_select(0, perm) for t in t_logits]
            else:
                xs, ys, ls, ts = X, Y, L, t_logits
            # A point every log_every steps and one at the epoch's end; a tail shorter than half a
            # window joins the window before it, so that no point is one batch's loss alone (with
            # the defaults on digits, 21 steps an epoch, points were 20 steps and 1 step apart).
            for i in range(steps_per_epoch):
                if ctl.interrupt:
                    ctl.checkpoint()
                idx = perm[i * bs:(i + 1) * bs]
                rows = slice(i * bs, (i + 1) * bs) if per_epoch else idx
                batch = Batch(xs[rows], ys[rows], ls[rows], idx,
                              None if ts is None else [t[rows] for t in ts])
                terms = train_step(method, batch, step, opt, sched, amp)
                for k, v in terms.items():
                    window.setdefault(k, []).append(v.detach())
                step += 1
                if i == steps_per_epoch - 1 or (step - win_start >= tc.log_every and
                                                 steps_per_epoch - 1 - i >= tc.log_every / 2):
                    self._flush(window, win_start, step, steps_per_epoch, opt, t_start, step0,
                                total_steps, bs)
                    window, win_start = {}, step
            method.train(False)
            evs = evaluate_each(student, eval_set, dev, t_test_logits)
            arts = self._epoch_extras(student, method, monitors, evs, epoch)
            self._record(step, float(epoch + 1), evs, final=True)
            if arts:
                self.emit(Artifacts(step, epoch + 1, arts))
            method.train(True)
            if self.checkpoints and tc.checkpoint_every and (epoch + 1) % tc.checkpoint_every == 0:
                self._save(student, extra, opt, sched, gen, epoch + 1, step)
        method.train(False)
        if self.checkpoints:
            self._save(student, extra, opt, sched, gen, tc.epochs, step)
        self.student = student
        self.summary["elapsed_s"] = time.perf_counter() - t0
        return self.summary

    # -- the parts a stacked run changes (kdengine.run.group.GroupTrainer) ----------------------
    def _build_student(self, data: DataBundle) -> nn.Module:
        """The student, seeded so that the same config always starts from the same weights."""
        seed_everything(self.cfg.train.seed)
        return build_model(self.cfg.student, data.input_shape, data.n_classes).to(self.device)

    def _record(self, step: int, epoch: float, per_student: list[dict[str, float]],
                final: bool = False) -> None:
        """Metrics of the student(s) in training, one dict per student (here: one). ``final`` marks
        an epoch's evaluation, whose values become the summary's ``final_*``."""
        values = per_student[0]
        self._metrics(step, epoch, values)
        if final:
            self.summary.update({f"final_{k}": v for k, v in values.items()})

    @staticmethod
    def _epoch_extras(student, method, monitors, evs: list[dict], epoch: int) -> dict:
        """The method's and the monitors' epoch metrics (added to ``evs``) and their artifacts."""
        extra = method.epoch_metrics(epoch)
        for ev in evs:
            ev.update(extra)
        arts = method.artifacts()
        for mon in monitors:      # a monitor looks at one model: a stacked run is given none
            evs[0].update(mon.metrics(student, evs[0]))
            arts.update(mon.artifacts(student, epoch + 1))
        return arts

    def _flush(self, window, win_start, step, spe, opt, t_start, step0, total_steps, bs):
        """Read the window's loss terms back (one sync), check them, record one metrics point."""
        elapsed = time.perf_counter() - t_start
        rate = (step - step0) / elapsed if elapsed > 0 else 0.0
        common = {"lr": opt.param_groups[0]["lr"], "samples_per_s": rate * bs, "elapsed_s": elapsed,
                  "eta_s": (total_steps - step) / rate if rate > 0 else float("nan"),
                  "progress": step / total_steps}
        self._record(step, step / spe, [{**v, **common} for v in
                                        read_window(window, win_start, spe, self._window_weights())])

    def _window_weights(self) -> dict:
        """The weights a log window's terms are read back with (per term: a number, or ``[S]``)."""
        return self.method.term_weights

    # -- checkpoints (for resume after a crash) --------------------------------------------------
    def _checkpoint(self, student, extra, opt, sched, gen, epoch, step) -> RunCheckpoint:
        """The run's state now, in the one checkpoint layout."""
        return RunCheckpoint(
            config_hash=self.cfg.hash, epoch=epoch, step=step,
            state_dict={k: v.detach().cpu() for k, v in student.state_dict().items()},
            extra=[{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in extra],
            optimizer=opt.state_dict(), scheduler=sched.state_dict() if sched is not None else None,
            rng=gen.get_state(), torch_rng=torch.get_rng_state(), method=self.method.extra_state())

    def _save(self, student, extra, opt, sched, gen, epoch, step):
        ck = self._checkpoint(student, extra, opt, sched, gen, epoch, step)
        self.emit(Checkpoint(epoch, step, ck.to_bytes()))

    def _restore(self, student, extra, opt, sched, gen) -> int:
        ck = RunCheckpoint.from_bytes(self.resume_from, "the run's last checkpoint")
        if ck.config_hash != self.cfg.hash:
            raise RuntimeError("the checkpoint belongs to a different configuration")
        student.load_state_dict(ck.state_dict)
        for m, st in zip(extra, ck.extra):
            m.load_state_dict(st)
        if ck.optimizer is None:
            raise RuntimeError("the checkpoint holds no optimiser state to continue from")
        opt.load_state_dict(ck.optimizer)
        self.method.load_extra_state(ck.method)
        if sched is not None and ck.scheduler:
            sched.load_state_dict(ck.scheduler)
        gen.set_state(ck.rng)
        torch.set_rng_state(ck.torch_rng)
        return int(ck.epoch)


# Largest transfer set (its inputs, in bytes) that the trainer copies into each epoch's order: a
# step then slices its batch instead of indexing it. An image set (CIFAR: 600 MB) is indexed per
# step instead of being held twice.
EPOCH_COPY_BYTES = 32 * 2**20


def memory_format(choice: str, arch: str, input_shape: tuple,
                  dev: torch.device) -> torch.memory_format:
    """channels_last (NHWC) for convolutional students on CUDA (``choice`` auto) or when asked for
    (on), else the default layout. Only image batches (C, H, W) have a layout to choose."""
    conv = arch in CONV_ARCHS and len(input_shape) == 3
    on = choice == "on" or (choice == "auto" and dev.type == "cuda")
    return torch.channels_last if conv and on else torch.contiguous_format


def train_step(method, batch: Batch, step: int, opt, sched, amp=None) -> dict[str, torch.Tensor]:
    """One optimiser step on the method's weighted sum of terms; returns the terms UNWEIGHTED, still
    on the device (``read_window`` weighs them, once per log window).

    Each term is a scalar, or ``[S]`` for S stacked students: their sum is one backward for all
    (a student's loss depends only on its own weights, so each gets the gradient it would alone)."""
    with amp if amp is not None else nullcontext():
        terms = method.loss_terms(batch, step)
    loss = sum(method.weigh(terms).values())
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()            # summed over stacked students; a scalar is its own sum
    opt.step()
    if sched is not None:
        sched.step()
    return terms


def read_window(window: dict[str, list[torch.Tensor]], win_start: int, spe: int,
                weights: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """A log window's loss terms read back (one sync), weighed (``weights``: term ->
    a number, or ``[S]``, one per stacked student; a term not listed has weight 1), checked and
    averaged: one dict of ``loss/<term>`` and ``loss/total`` per student (a plain run has one).
    Raises NonFiniteLoss naming the term, the step (and the student, when stacked) where a value
    stopped being finite."""
    weights = weights or {}
    if not window:
        return [{}]
    # Terms may appear or vanish mid window (a two-stage schedule), so a term's list can be shorter
    # than the window: a term is averaged over the steps it was present, and the total (the sum of
    # the terms, 0 where absent) over all the window's steps.
    n_steps = max(len(vs) for vs in window.values())
    weighed = []                                                         # [steps, students] each
    for k, vs in window.items():
        w = weights.get(k, 1.0)
        w = w.detach().float().reshape(1, -1) if isinstance(w, torch.Tensor) else w
        weighed.append(torch.stack(vs).float().reshape(len(vs), -1) * w)
    host = torch.cat([a.reshape(-1) for a in weighed]).cpu()            # the window's one sync
    means, sums = {}, None
    for (k, vs), a, arr in zip(window.items(), weighed, host.split([a.numel() for a in weighed])):
        arr = arr.view(a.shape)
        bad = ~torch.isfinite(arr)
        if bad.any():
            row, col = (int(i) for i in bad.nonzero()[0])
            who = f" of student {col}" if arr.shape[1] > 1 else ""
            if len(vs) == n_steps:
                at = win_start + row + 1
                where = f"at step {at} (epoch {(at - 1) // spe + 1})"
            else:   # present on part of the window only: its row is not the step
                where = f"between steps {win_start + 1} and {win_start + n_steps}"
            raise NonFiniteLoss(f"loss term {k!r}{who} became {arr[row, col].item()} {where}; "
                                f"try a smaller learning rate")
        means[f"loss/{k}"] = arr.mean(0)
        sums = arr.sum(0) if sums is None else sums + arr.sum(0)
    means["loss/total"] = sums / n_steps
    n = sums.shape[0]
    cols = {k: m.expand(n).tolist() for k, m in means.items()}
    return [{k: col[j] for k, col in cols.items()} for j in range(n)]
