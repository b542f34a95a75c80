"""Where runs execute: threads in the engine's process, or worker processes beside it.

An executor hosts up to ``slots`` runs. With more than one slot its runs take turns through a
:class:`~kdengine.run.slicing.Baton` (time-slicing), so every admitted run shows progress quickly;
worker processes add parallelism that threads cannot give Python-bound tiny models.

A worker process gets plain data only: the config as a dict (``RunConfig.from_dict`` in the
child), the checkpoint path, and pause / resume / stop commands; it sends back the trainer's events
(plain dicts) and one ``_end`` outcome per run. The engine's process keeps the store and the live
run states, so store semantics are the same either way. When a worker process dies, the engine is
told through :meth:`ProcessExecutor.on_death` and marks that worker's runs failed.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import types
import queue
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

Outcome = dict      # {"status": "done" | "stopped" | "failed", "summary", "error", "traceback"}


def execute(make_trainer: Callable[[], Any], control) -> Outcome:
    """Run one trainer to its end and say how it ended (never raises for a run's own fault)."""
    from kdengine.core.knobs import ConfigError
    from kdengine.run.trainer import NonFiniteLoss, StopRequested
    trainer = None
    try:
        if control.stopped:
            raise StopRequested()
        trainer = make_trainer()
        return {"status": "done", "summary": trainer.run()}
    except (StopRequested, InterruptedError):
        return {"status": "stopped", "summary": trainer.summary if trainer else {}}
    except (NonFiniteLoss, ConfigError) as e:
        return {"status": "failed", "error": str(e), "traceback": None}
    except Exception as e:  # any fault inside a run is recorded; the executor keeps serving
        msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return {"status": "failed", "error": msg, "traceback": traceback.format_exc()}


def run_cohort(members: list, control, monitors=()) -> None:
    """Train a cohort's members (:class:`~kdengine.run.cohort.Member`) in one pass. Each member's
    ``end`` is called once: when it leaves the pass (pause, stop, a non-finite loss), or with how
    the pass ended, as :func:`execute` says it for one run."""
    from kdengine.run.cohort import CohortTrainer
    made = []

    def make():
        made.append(CohortTrainer(members, control, monitors))
        return made[0]
    outcome = execute(make, control)
    if made:
        made[0].finish(outcome)
    else:                       # it could not even be built: every member ends the same way
        for m in members:
            m.end(outcome)


class ThreadExecutor:
    """Runs in threads of this process; ``run_local(unit)`` is the engine's in-process runner of a
    run or a cohort (a unit has ``unit_id`` and ``control``)."""

    kind = "thread"
    ready = threading.Event()
    ready.set()

    def __init__(self, index: int, slots: int, run_local: Callable[[Any], None]):
        from kdengine.run.slicing import Baton
        self.index, self.slots = index, slots
        self.active: set[str] = set()
        self.baton = Baton() if slots > 1 else None
        self._run_local = run_local
        self._threads: list[threading.Thread] = []

    def start(self, job) -> None:
        self.active.add(job.unit_id)
        # named by the id's tail: its head is the date, the same for every run of a day
        t = threading.Thread(target=self._run, args=(job,), name=f"kd-run-{job.unit_id[-6:]}",
                             daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _run(self, job) -> None:
        import torch
        torch.set_num_threads(1)   # two runs with more threads each were 5-20x slower on 2 cores
        if self.baton is not None:
            job.control.hold(self.baton)
        try:
            self._run_local(job)
        finally:
            if self.baton is not None:
                job.control.leave()

    start_cohort = start

    def command(self, run_id: str, verb: str) -> None:
        pass        # the job's own Control object is shared with its thread

    def close(self, wait: bool = True) -> None:
        if wait:
            for t in list(self._threads):
                t.join(timeout=30)
        if self.baton is not None:
            self.baton.close()


class ProcessExecutor:
    """One spawned worker process hosting up to ``slots`` time-sliced runs."""

    kind = "process"

    def __init__(self, index: int, slots: int, on_event: Callable[[str, dict], None],
                 on_death: Callable[["ProcessExecutor", str], None]):
        self.index, self.slots = index, slots
        self.active: set[str] = set()
        self._on_event, self._on_death = on_event, on_death
        ctx = mp.get_context("spawn")       # fork would copy the server's threads and locks
        self._cmd: Any = ctx.Queue()
        self._events: Any = ctx.Queue()
        self.process = ctx.Process(target=child_main, args=(self._cmd, self._events, slots),
                                   name=f"kd-worker-{index}", daemon=True)
        with _main_not_reimported():
            self.process.start()
        self._closing = False
        self.ready = threading.Event()          # set once the worker has imported and warmed up
        self._reader = threading.Thread(target=self._read, name=f"kd-reader-{index}", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def start(self, job) -> None:
        self.active.add(job.state.run_id)
        # the data folder as this process sees it now (cached teachers and data sets live there)
        env = {k: os.environ[k] for k in ("KD_RUNS_DIR", "KD_DATA_DIR") if k in os.environ}
        self._cmd.put(("start", job.state.run_id, job.cfg.to_dict(), job.state.owner,
                       str(job.checkpoint_path), job.resume, env))
        if job.control.paused:
            self._cmd.put(("pause", job.state.run_id))

    def start_cohort(self, cohort) -> None:
        """Members' events come back keyed by their own run ids, each with its own ``_end``."""
        self.active.add(cohort.unit_id)
        env = {k: os.environ[k] for k in ("KD_RUNS_DIR", "KD_DATA_DIR") if k in os.environ}
        jobs = cohort.members()
        self._cmd.put(("start_cohort", cohort.unit_id,
                       [(j.state.run_id, j.cfg.to_dict(), j.state.owner, str(j.checkpoint_path))
                        for j in jobs], env))
        for j in jobs:
            if j.control.paused:
                self._cmd.put(("pause", j.state.run_id))

    def command(self, run_id: str, verb: str) -> None:
        # sent whatever the run: a cohort member is not a unit of its own; the worker ignores a
        # run it does not host
        self._cmd.put((verb, run_id))

    def close(self, wait: bool = True) -> None:
        self._closing = True
        try:
            self._cmd.put(("exit",))
        except Exception:
            pass
        if wait:
            self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()

    def _read(self) -> None:
        while True:
            try:
                run_id, ev = self._events.get(timeout=0.5)
            except queue.Empty:
                if self.process.is_alive():
                    continue
                if not self._closing:
                    self._on_death(self, f"exit code {self.process.exitcode}")
                return
            except (EOFError, OSError):     # the pipe broke with the process
                if not self._closing:
                    self._on_death(self, f"exit code {self.process.exitcode}")
                return
            if ev["type"] == "_ready":
                self.ready.set()
                continue
            try:
                self._on_event(run_id, ev)
            except Exception:   # a fault while recording must not stop this worker's events
                traceback.print_exc()


_main_lock = threading.Lock()


@contextlib.contextmanager
def _main_not_reimported():
    """Spawn re-runs the parent's ``__main__`` file in the child; under Streamlit that file is the
    app script (which would build another engine). The child needs nothing from it: hide it while
    the process starts (``get_preparation_data`` runs inside ``start()``)."""
    with _main_lock:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


# ---- the worker process ---------------------------------------------------------------------------
def child_main(cmd_q, ev_q, slots: int) -> None:
    """The worker process: start runs as threads sharing one baton; obey pause / resume / stop."""
    import torch
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from kdengine.run.slicing import Baton, SlicedControl
    prewarm()
    ev_q.put(("", {"type": "_ready"}))
    baton = Baton()
    controls: dict[str, SlicedControl] = {}
    while True:
        msg = cmd_q.get()
        verb = msg[0]
        if verb == "exit":
            for ctl in controls.values():
                ctl.stop()
            return
        if verb == "start":
            run_id, cfg, owner, ck, resume, env = msg[1:]
            os.environ.update(env)
            ctl = controls[run_id] = SlicedControl(owner)
            threading.Thread(target=_child_run, args=(run_id, cfg, ck, resume, ctl, baton, ev_q,
                                                      controls), daemon=True).start()
        elif verb == "start_cohort":
            cohort_id, members, env = msg[1:]
            os.environ.update(env)
            ctls = {m[0]: SlicedControl(m[2]) for m in members}
            controls.update(ctls)
            threading.Thread(target=_child_cohort, args=(cohort_id, members, ctls, baton, ev_q,
                                                         controls), daemon=True).start()
        elif msg[1] in controls:
            getattr(controls[msg[1]], verb)()


def _child_run(run_id, cfg_dict, ck, resume, ctl, baton, ev_q, controls) -> None:
    import torch
    torch.set_num_threads(1)
    from kdengine.core.config import RunConfig
    from kdengine.run.monitors import standard_monitors
    from kdengine.run.trainer import Trainer

    def emit(ev: dict) -> None:
        ev_q.put((run_id, ev))
    ctl.on_pause = lambda paused: emit({"type": "status", "status": "paused" if paused else "running"})
    ctl.hold(baton)
    try:
        outcome = execute(lambda: Trainer(RunConfig.from_dict(cfg_dict), emit, ctl, Path(ck),
                                          resume=resume, monitors=standard_monitors()), ctl)
    finally:
        ctl.leave()
        controls.pop(run_id, None)
    emit({"type": "_end", **outcome})


def _child_cohort(cohort_id, members, ctls, baton, ev_q, controls) -> None:
    import torch
    torch.set_num_threads(1)
    from kdengine.core.config import RunConfig
    from kdengine.run.cohort import CohortControl, Member
    from kdengine.run.monitors import standard_monitors

    def emitter(run_id):
        return lambda ev: ev_q.put((run_id, ev))

    def ender(run_id):
        def end(outcome: dict) -> None:
            controls.pop(run_id, None)
            ev_q.put((run_id, {"type": "_end", **outcome}))
        return end
    ms = [Member(rid, RunConfig.from_dict(cfg), emitter(rid), ctls[rid], Path(ck), ender(rid))
          for rid, cfg, _owner, ck in members]
    ctl = CohortControl(cohort_id, ctls)
    ctl.hold(baton)
    try:
        run_cohort(ms, ctl, standard_monitors())
    finally:
        ctl.leave()


def prewarm() -> None:
    """Import the training stack and load the default data set once, before the first run asks."""
    try:
        from kdengine.core.config import DataConfig
        from kdengine.core.registry import method_names
        from kdengine.data.datasets import load_data
        import kdengine.run.monitors  # noqa: F401
        import kdengine.run.trainer  # noqa: F401
        method_names()
        load_data(DataConfig())
        first_steps()
    except Exception:  # best effort only: a real run reports its own errors
        pass


def first_steps() -> None:
    """A training step with each optimizer: the first ``step()`` in a process imports a large part
    of torch (dynamo, sympy; ~10 s on a busy 2-core machine), which a student should not wait for."""
    import torch
    model = torch.nn.Linear(4, 2)
    for make in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        opt = make(model.parameters(), lr=1e-3)
        model(torch.zeros(2, 4)).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
