"""One training run: data -> teacher (trained, cached or loaded) -> optional baseline -> student.

The trainer knows nothing about threads or UIs: it reports through ``emit(event)`` and asks a
``Control`` whether to pause or stop. Per-step Python work is kept tiny (the KD loop on a small MLP
takes ~0.5 ms a step): loss terms are kept as device tensors and read back once every ``log_every``
steps, where the NaN check also happens, still naming the exact step and term.
"""
from __future__ import annotations

import platform
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from kdengine.core.config import RunConfig
from kdengine.data.datasets import DataBundle, load_data
from kdengine.methods import Batch, TrainContext, get_method_class
from kdengine.models import build_model, count_params, logits_of, model_label
from kdengine.run.evaluation import evaluate
from kdengine.teachers.baselines import baseline_accuracy, teacher_gap_warning
from kdengine.teachers.sources import get_teacher
from kdengine.core.checkpoints import save_checkpoint, safe_load

Emit = Callable[[dict], None]


class StopRequested(Exception):
    """Raised inside the loop when the user pressed Stop."""


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf."""


class Control:
    """Pause / stop flags shared between the engine and one trainer (thread-safe).

    ``interrupt`` is a plain attribute so the hot loop checks it with one read per step."""

    def __init__(self):
        self.interrupt = False
        self._resume = threading.Event()
        self._resume.set()
        self._stop = False
        self.on_pause: Callable[[bool], None] | None = None

    def pause(self):
        self._resume.clear()
        self.interrupt = True

    def resume(self):
        self._resume.set()
        self.interrupt = self._stop

    def stop(self):
        self._stop = True
        self.interrupt = True
        self._resume.set()

    @property
    def stopped(self) -> bool:
        return self._stop

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def checkpoint(self) -> None:
        """Block while paused; raise StopRequested when stopped."""
        if self.paused and not self._stop:
            if self.on_pause:
                self.on_pause(True)
            self._resume.wait()
            if self.on_pause:
                self.on_pause(False)
        if self._stop:
            raise StopRequested()
        self.interrupt = False


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
    """Runs one config. ``run()`` returns the summary dict; events go to ``emit``."""

    def __init__(self, cfg: RunConfig, emit: Emit | None = None, control: Control | None = None,
                 checkpoint_path=None, resume: bool = False,
                 monitors: Sequence[MonitorFactory] = ()):
        # A copy: the run must not see later edits to the caller's object. Validated once, where
        # the run was submitted; validated() only re-checks a config edited since.
        self.cfg = cfg.copy().validated()
        self.emit = emit or (lambda e: None)
        self.control = control or Control()
        self.checkpoint_path = checkpoint_path
        self.resume = resume
        self.monitor_factories = list(monitors)
        self.device = choose_device(self.cfg.train.device)
        self.summary: dict[str, Any] = {}
        self.method = None

    # -- small emit helpers ----------------------------------------------------------------------
    def _phase(self, phase: str, message: str, frac: float = 0.0):
        self.emit({"type": "phase", "phase": phase, "message": message, "progress": frac})

    def _notice(self, message: str):
        self.emit({"type": "notice", "message": message})

    def _metrics(self, step: int, epoch: float, values: dict[str, float]):
        self.emit({"type": "metrics", "step": step, "epoch": epoch, "values": values})

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
            self._notice(f"Teacher {info['label']} ({'cached' if info['cached'] else info['source']})"
                         f": test accuracy {info['test_acc']:.2%}")
            if info.get("warning"):
                self._notice(info["warning"])
            teachers = [teacher]
            t_test_logits = logits_of(teacher, data.test.x, self.device)
            self._metrics(0, 0.0, {"teacher_test_acc": info["test_acc"]})
        if cfg.train.baseline:
            self._baseline(data)
        return self._train_student(data, method_cls, params, teachers, t_test_logits, t0)

    def _baseline(self, data: DataBundle):
        """Student alone on the same labelled data (cached), so the run shows what KD added."""
        acc, cached = baseline_accuracy(self.cfg, data, self.device,
                                        lambda f, m: self._phase("baseline", f"student alone: {m}", f))
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
        seed_everything(tc.seed)
        student = build_model(cfg.student, data.input_shape, data.n_classes).to(dev)
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
            if zeroed:
                self._notice("No labels in the transfer set: " + ", ".join(zeroed) + " forced to 0.")
        self._phase("setup", f"preparing {method_cls.name}")
        method.setup(data)
        extra = [m.to(dev) for m in method.extra_modules()]
        trainable = [p for m in [student, *extra] for p in m.parameters() if p.requires_grad]
        opt = make_optimizer(tc, trainable)
        sched = make_scheduler(tc, opt, steps_per_epoch * tc.epochs)
        self.summary.update(student_label=model_label(cfg.student), student_params=count_params(student),
                            method=method_cls.name)

        X, Y = data.transfer.x.to(dev), data.transfer.y.to(dev)
        L = data.labeled.to(dev)
        all_labeled = bool(data.labeled.all())
        ones = torch.ones(bs, dtype=torch.bool, device=dev)   # the mask of a fully labelled batch
        cached_t = None
        if teachers and method.cache_teacher_logits:
            # method.teachers: a method may add teachers in setup() (multi_teacher)
            cached_t = [logits_of(t, data.transfer.x, dev) for t in method.teachers]
        gen = torch.Generator().manual_seed(tc.seed)
        start_epoch = 0
        if self.resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            start_epoch = self._restore(student, extra, opt, sched, gen)
            self._notice(f"Resumed from the checkpoint after epoch {start_epoch}.")

        amp = torch.autocast("cuda", dtype=torch.bfloat16) if (tc.amp and dev.type == "cuda") else None
        total_steps = steps_per_epoch * tc.epochs
        step = start_epoch * steps_per_epoch
        window: dict[str, list] = {}
        win_start = step
        t_start = time.perf_counter()
        step0 = step
        self._phase("student", f"training student with {method_cls.name}", 0.0)
        setup = MonitorSetup(cfg, data, teachers[0] if teachers else None, dev, method_cls.name)
        monitors = [m for m in (make(setup) for make in self.monitor_factories) if m is not None]
        method.train(True)
        ctl = self.control
        for epoch in range(start_epoch, tc.epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            for i in range(steps_per_epoch):
                if ctl.interrupt:
                    ctl.checkpoint()
                idx = perm[i * bs:(i + 1) * bs]
                batch = Batch(X[idx], Y[idx], ones if all_labeled else L[idx], idx,
                              None if cached_t is None else [c[idx] for c in cached_t],
                              all_labeled)
                if amp is not None:
                    with amp:
                        terms = method.weigh(method.loss_terms(batch, step))
                else:
                    terms = method.weigh(method.loss_terms(batch, step))
                vals = iter(terms.values())
                total = next(vals)
                for v in vals:          # not sum(): that starts from 0 and costs one more op
                    total = total + v
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                for k, v in terms.items():
                    window.setdefault(k, []).append(v.detach())
                step += 1
                if step - win_start >= tc.log_every or i == steps_per_epoch - 1:
                    self._flush(window, win_start, step, steps_per_epoch, opt, t_start, step0,
                                total_steps, bs)
                    window, win_start = {}, step
            method.train(False)
            ev = evaluate(student, data, dev, t_test_logits)
            ev.update(method.epoch_metrics(epoch))
            arts = method.artifacts()
            for mon in monitors:
                ev.update(mon.metrics(student, ev))
                arts.update(mon.artifacts(student, epoch + 1))
            self._metrics(step, float(epoch + 1), ev)
            if arts:
                self.emit({"type": "artifacts", "step": step, "epoch": epoch + 1, "data": arts})
            method.train(True)
            self.summary.update({f"final_{k}": v for k, v in ev.items()})
            if self.checkpoint_path is not None and tc.checkpoint_every and \
                    (epoch + 1) % tc.checkpoint_every == 0:
                self._save(student, extra, opt, sched, gen, epoch + 1, step)
        method.train(False)
        if self.checkpoint_path is not None:
            self._save(student, extra, opt, sched, gen, tc.epochs, step)
        self.student = student
        self.summary["elapsed_s"] = time.perf_counter() - t0
        return self.summary

    def _flush(self, window, win_start, step, spe, opt, t_start, step0, total_steps, bs):
        """Read the window's loss terms back (one sync), check them, emit one metrics point."""
        values: dict[str, float] = {}
        total = None
        for k, vs in window.items():
            arr = torch.stack(vs).float().cpu()
            bad = ~torch.isfinite(arr)
            if bad.any():
                at = win_start + int(bad.nonzero()[0, 0]) + 1
                raise NonFiniteLoss(f"loss term {k!r} became {arr[bad][0].item()} at step {at} "
                                    f"(epoch {(at - 1) // spe + 1}); try a smaller learning rate")
            values[f"loss/{k}"] = arr.mean().item()
            total = arr if total is None else total + arr
        if total is not None:
            values["loss/total"] = total.mean().item()
        elapsed = time.perf_counter() - t_start
        done = step - step0
        rate = done / elapsed if elapsed > 0 else 0.0
        values["lr"] = opt.param_groups[0]["lr"]
        values["samples_per_s"] = rate * bs
        values["elapsed_s"] = elapsed
        values["eta_s"] = (total_steps - step) / rate if rate > 0 else float("nan")
        values["progress"] = step / total_steps
        self._metrics(step, step / spe, values)

    # -- checkpoints (for resume after a crash) --------------------------------------------------
    def _save(self, student, extra, opt, sched, gen, epoch, step):
        save_checkpoint(self.checkpoint_path, {
            "state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()},
            "extra": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in extra],
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else {},
            "rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "epoch": epoch, "step": step, "config_hash": self.cfg.hash})

    def _restore(self, student, extra, opt, sched, gen) -> int:
        ck = safe_load(self.checkpoint_path)
        if ck.get("config_hash") != self.cfg.hash:
            raise RuntimeError("the checkpoint belongs to a different configuration")
        student.load_state_dict(ck["state_dict"])
        for m, st in zip(extra, ck.get("extra", [])):
            m.load_state_dict(st)
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck.get("scheduler"):
            sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])
        return int(ck["epoch"])


def make_optimizer(tc, params):
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)


def make_scheduler(tc, opt, total_steps):
    if tc.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total_steps))
    if tc.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, max(1, total_steps // 3), gamma=0.1)
    return None
