"""Where units of work execute: threads of the engine's process, or worker processes beside it
(a third kind, Ray actors, is :mod:`kdengine.run.ray_executor`). All three offer the same small
interface to the engine and train a unit with the same :func:`~kdengine.run.units.train_unit`:

* ``start(unit, controls)`` begins a :class:`~kdengine.run.units.Unit`; ``controls`` are the engine's
  pause / stop flags of its runs (a thread shares them; a process or an actor is sent their state
  and then every ``command(run_id, verb)``);
* events come back through ``on_event(run_id, event)``, each run's last one an ``Ended``;
* ``on_lost(executor, unit_ids, why)`` says that units died with their executor (a killed worker
  process, a lost node, a thread killed by something other than an ``Exception``): the engine
  continues their runs from their last checkpoints;
* ``active`` (the unit ids it hosts, kept by the engine), ``slots``, ``ready``, ``close(wait)``.

An executor hosts up to ``slots`` units. With more than one slot its runs take turns through a
:class:`~kdengine.run.time_slices.Baton`, so every admitted run shows progress quickly; worker
processes add the parallelism that threads cannot give Python-bound tiny models.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import sys
import threading
import traceback
import types
from typing import Any, Callable, Iterable

from kdengine.core.events import Event
from kdengine.run.control import Control

OnEvent = Callable[[str, Event], None]
OnLost = Callable[[Any, list, str], None]


class ThreadExecutor:
    """Units train in threads of this process, sharing the engine's controls."""

    kind = "thread"

    def __init__(self, index: int, slots: int, on_event: OnEvent, on_lost: OnLost):
        from kdengine.run.time_slices import Baton
        self.index, self.slots = index, slots
        self.active: set[str] = set()
        self.ready = threading.Event()
        self.ready.set()
        self.baton = Baton() if slots > 1 else None
        self._on_event, self._on_lost = on_event, on_lost
        self._threads: list[threading.Thread] = []

    def start(self, unit, controls: dict[str, Control]) -> None:
        # named by the id's tail: its head is the date, the same for every run of a day
        t = threading.Thread(target=self._run, args=(unit, controls),
                             name=f"kd-run-{unit.unit_id[-6:]}", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _run(self, unit, controls) -> None:
        import torch
        from kdengine.run.units import train_unit
        torch.set_num_threads(1)   # runs side by side, each with many threads, fight over the cores
        baton = self.baton
        try:
            train_unit(unit, controls, self._on_event,
                       hold=None if baton is None else lambda c: c.hold(baton),
                       leave=None if baton is None else lambda c: c.leave())
        except BaseException as e:      # not a run's fault: the thread itself was killed
            self._on_lost(self, [unit.unit_id], f"its thread ended with {type(e).__name__}")

    def command(self, run_id: str, verb: str) -> None:
        pass        # the run's Control object is the engine's own

    def close(self, wait: bool = True) -> None:
        if wait:
            for t in list(self._threads):
                t.join(timeout=30)
        if self.baton is not None:
            self.baton.close()


class ProcessExecutor:
    """One spawned worker process hosting up to ``slots`` time-sliced units."""

    kind = "process"

    def __init__(self, index: int, slots: int, on_event: OnEvent, on_lost: OnLost):
        self.index, self.slots = index, slots
        self.active: set[str] = set()
        self._on_event, self._on_lost = on_event, on_lost
        ctx = mp.get_context("spawn")       # fork would copy the server's threads and locks
        self._cmd: Any = ctx.Queue()
        self._events: Any = ctx.Queue()
        self.process = ctx.Process(target=child_main, args=(self._cmd, self._events),
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

    def start(self, unit, controls: dict[str, Control]) -> None:
        # the data folder as this process sees it now (cached teachers and data sets live there)
        env = {k: os.environ[k] for k in ("KD_RUNS_DIR", "KD_DATA_DIR") if k in os.environ}
        self._cmd.put(("start", unit, env))
        for rid, ctl in controls.items():
            if ctl.stopped:
                self._cmd.put(("stop", rid))
            elif ctl.paused:
                self._cmd.put(("pause", rid))

    def command(self, run_id: str, verb: str) -> None:
        # sent whatever the run: the worker ignores a run it does not host
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
                return self._died()
            except (EOFError, OSError):     # the pipe broke with the process
                return self._died()
            if run_id is None:              # the worker has imported and warmed up
                self.ready.set()
                continue
            try:
                self._on_event(run_id, ev)
            except Exception:   # a fault while recording must not stop this worker's events
                traceback.print_exc()

    def _died(self) -> None:
        if not self._closing:
            self._on_lost(self, list(self.active), f"exit code {self.process.exitcode}")


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


# ---- a worker (process or Ray actor) ---------------------------------------------------------------
class UnitHost:
    """Trains units in threads of this process, taking turns on one baton: what a worker process
    and a Ray worker both are. Each run gets its own control, which ``command`` sets; ``emit(run_id,
    event)`` carries the events away (a queue to the server, a buffer a Ray poll drains)."""

    def __init__(self, emit: Callable[[str, Event], None]):
        from kdengine.run.time_slices import Baton
        self.baton = Baton()
        self.controls: dict[str, Control] = {}
        self._emit = emit

    def start(self, unit, paused: Iterable[str] = (), stopped: Iterable[str] = ()) -> None:
        from kdengine.run.time_slices import SlicedControl
        mine = {t.run_id: SlicedControl(unit.owner) for t in unit.runs}
        for rid in paused:
            mine[rid].pause()
        for rid in stopped:
            mine[rid].stop()
        self.controls.update(mine)
        threading.Thread(target=self._train, args=(unit, mine), daemon=True,
                         name=f"kd-run-{unit.unit_id[-6:]}").start()

    def command(self, run_id: str, verb: str) -> None:
        ctl = self.controls.get(run_id)         # a run this host does not (or no longer) train
        if ctl is not None:
            getattr(ctl, verb)()

    def stop_all(self) -> None:
        for ctl in list(self.controls.values()):
            ctl.stop()

    def _train(self, unit, mine: dict[str, Control]) -> None:
        import torch
        from kdengine.core.events import Ended
        from kdengine.run.units import train_unit
        torch.set_num_threads(1)

        def emit(run_id: str, ev: Event) -> None:
            if isinstance(ev, Ended):
                self.controls.pop(run_id, None)
            self._emit(run_id, ev)
        train_unit(unit, mine, emit, hold=lambda c: c.hold(self.baton), leave=lambda c: c.leave())


def child_main(cmd_q, ev_q) -> None:
    """The worker process: a :class:`UnitHost` obeying the server's start / pause / resume / stop."""
    import torch
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    prewarm()
    ev_q.put((None, None))
    host = UnitHost(lambda run_id, ev: ev_q.put((run_id, ev)))
    while True:
        msg = cmd_q.get()
        verb = msg[0]
        if verb == "exit":
            host.stop_all()
            return
        if verb == "start":
            unit, env = msg[1:]
            os.environ.update(env)
            host.start(unit)
        else:
            host.command(msg[1], verb)


def prewarm() -> None:
    """Import the training stack and load the default data set once, before the first run asks."""
    try:
        from kdengine.core.config import DataConfig
        from kdengine.core.registry import method_names
        from kdengine.data.datasets import load_data
        import kdengine.run.units  # noqa: F401
        import kdengine.run.group  # noqa: F401
        method_names()
        load_data(DataConfig())
        first_steps()
    except Exception:  # best effort only: a real run reports its own errors
        pass


def first_steps() -> None:
    """A training step with each optimizer: the first ``step()`` in a process imports a large part
    of torch (dynamo, sympy; seconds on a busy 2-core machine), which a student should not wait
    for."""
    import torch
    model = torch.nn.Linear(4, 2)
    for make in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        opt = make(model.parameters(), lr=1e-3)
        model(torch.zeros(2, 4)).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
