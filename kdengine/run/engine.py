"""Background run manager: a job queue, worker threads, pause / resume / stop, live snapshots.

Callers (a web page, the CLI, a test) ``submit`` a config and get a run id; a worker thread runs the
trainer and folds its events into a locked :class:`RunState`. ``snapshot(run_id)`` returns a plain
copy that any thread may read (the web page polls it about once a second). Runs carry an ``owner``
so two browser sessions sharing one engine never see each other's runs mixed up.
"""
from __future__ import annotations

import copy
import os
import queue
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, Callable

from kdengine.core.config import RunConfig
from kdengine.core.knobs import ConfigError
from kdengine.core.store import ACTIVE, Store
from kdengine.run.monitors import standard_monitors
from kdengine.run.trainer import Control, Emit, NonFiniteLoss, StopRequested, Trainer, versions

Event = dict


class RunState:
    """Everything the UI shows about one run. Mutated only under ``lock``."""

    def __init__(self, run_id: str, config: dict, owner: str, name: str):
        self.lock = threading.Lock()
        self.run_id, self.config, self.owner, self.name = run_id, config, owner, name
        self.status = "queued"
        self.phase, self.phase_message, self.phase_progress = "queued", "waiting for a worker", 0.0
        self.step, self.epoch, self.progress, self.eta_s = 0, 0.0, 0.0, None
        self.error: str | None = None
        self.traceback: str | None = None
        self.notices: list[str] = []
        self.series: dict[str, list[tuple[int, float, float]]] = {}
        self.latest: dict[str, float] = {}
        self.artifacts: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.created = time.time()
        self.version = 0            # bumps on every change: a page redraws only when it moved

    def apply(self, ev: Event) -> None:
        with self.lock:
            self.version += 1
            kind = ev["type"]
            if kind == "metrics":
                step, epoch = ev["step"], ev["epoch"]
                for k, v in ev["values"].items():
                    self.series.setdefault(k, []).append((step, epoch, v))
                    self.latest[k] = v
                self.step = max(self.step, step)
                self.epoch = max(self.epoch, epoch)
                if "progress" in ev["values"]:
                    self.progress = ev["values"]["progress"]
                    self.eta_s = ev["values"].get("eta_s")
            elif kind == "phase":
                self.phase, self.phase_message = ev["phase"], ev["message"]
                self.phase_progress = ev.get("progress", 0.0)
            elif kind == "notice":
                self.notices.append(ev["message"])
            elif kind == "artifacts":
                self.artifacts.update(ev["data"])
                self.artifacts["_step"] = ev["step"]
            elif kind == "status":
                self.status = ev["status"]
                if ev.get("error"):
                    self.error = ev["error"]
                    self.traceback = ev.get("traceback")
                if ev["status"] == "done":
                    self.progress, self.eta_s = 1.0, 0.0
            elif kind == "summary":
                self.summary.update(ev["summary"])

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "run_id": self.run_id, "owner": self.owner, "name": self.name,
                "config": copy.deepcopy(self.config), "status": self.status, "phase": self.phase,
                "phase_message": self.phase_message, "phase_progress": self.phase_progress,
                "step": self.step, "epoch": self.epoch, "progress": self.progress,
                "eta_s": self.eta_s, "error": self.error, "traceback": self.traceback,
                "notices": list(self.notices), "latest": dict(self.latest),
                "series": {k: list(v) for k, v in self.series.items()},
                "artifacts": dict(self.artifacts), "summary": dict(self.summary),
                "created": self.created, "version": self.version,
            }


class _Job:
    def __init__(self, state: RunState, cfg: RunConfig, resume: bool):
        self.state, self.cfg, self.resume = state, cfg, resume
        self.control = Control()
        self.subscribers: list[Callable[[Event], None]] = []


def default_workers() -> int:
    env = os.environ.get("KD_MAX_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    import torch
    return 2 if torch.cuda.is_available() else 1


class Engine:
    """Thread-safe run manager. One per process is enough (the web app keeps it in cache_resource)."""

    # Metrics reach SQLite at most this often (plus at every epoch end and at the run's end), so a
    # killed process loses at most this much; KD_FLUSH_SECONDS=0 flushes every point (tests).
    FLUSH_SECONDS = float(os.environ.get("KD_FLUSH_SECONDS", "1.0"))
    KEEP_FINISHED = 200          # finished runs kept in memory; older ones are read from the store

    def __init__(self, store: Store | None = None, max_workers: int | None = None):
        self.store = store or Store()
        self.max_workers = max_workers or default_workers()
        self._jobs: "OrderedDict[str, _Job]" = OrderedDict()
        self._lock = threading.Lock()
        self._queue: "queue.Queue[str | None]" = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        for i in range(self.max_workers):
            t = threading.Thread(target=self._worker, name=f"kd-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    # -- public API ------------------------------------------------------------------------------
    def submit(self, cfg: RunConfig | dict, owner: str = "", name: str = "",
               run_id: str | None = None, parent: str | None = None) -> str:
        """Validate and queue a run; returns its id. Raises ConfigError for a bad config.

        ``parent`` tags the run with the sweep / experiment that asked for it."""
        # The one validation of a run (a config validated before, e.g. by the Lab, and unchanged
        # since is not re-checked); the trainer trusts it.
        cfg = RunConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg.copy().validated()
        check_resources(cfg)
        name = name or cfg.name
        resume = run_id is not None
        if run_id is None:
            run_id = self.store.create_run(cfg.to_dict(), cfg.hash, owner=owner, name=name,
                                           versions=versions(), parent=parent)
        else:
            self.store.set_status(run_id, "queued")
        state = RunState(run_id, cfg.to_dict(), owner, name)
        job = _Job(state, cfg, resume)
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is shut down")
            self._jobs[run_id] = job
            self._trim()
        self._queue.put(run_id)
        return run_id

    def resume_run(self, run_id: str) -> str:
        """Continue an interrupted or stopped run from its last checkpoint (same run id)."""
        row = self.store.get_run(run_id)
        if row is None:
            raise KeyError(f"no run {run_id}")
        if row["status"] in ACTIVE and run_id in self._jobs:
            raise ValueError(f"run {run_id} is {row['status']}")
        cfg = RunConfig.from_dict(row["config"])
        ck = self.store.checkpoint_path(run_id)
        if ck.exists():
            from kdengine.core.checkpoints import safe_load
            step = int(safe_load(ck).get("step", 0))
            self.store.truncate_metrics(run_id, step)
        return self.submit(cfg, owner=row["owner"], name=row["name"], run_id=run_id)

    def pause(self, run_id: str) -> None:
        job = self._job(run_id)
        if job.state.status in ("queued", "running"):
            job.control.pause()

    def resume(self, run_id: str) -> None:
        job = self._job(run_id)
        job.control.resume()
        if job.state.status == "paused":
            self._set_status(job, "running")

    def stop(self, run_id: str) -> None:
        job = self._job(run_id)
        job.control.stop()
        if job.state.status == "queued":
            self._set_status(job, "stopped")

    def status(self, run_id: str) -> str:
        job = self._jobs.get(run_id)
        if job is not None:
            return job.state.status
        row = self.store.get_run(run_id)
        if row is None:
            raise KeyError(f"no run {run_id}")
        return row["status"]

    def snapshot(self, run_id: str) -> dict:
        """The run's live state as plain data; for runs not in memory, rebuilt from the store."""
        job = self._jobs.get(run_id)
        if job is not None:
            return job.state.snapshot()
        return snapshot_from_store(self.store, run_id)

    def runs(self, owner: str | None = None) -> list[dict]:
        """Light snapshots (no series) of the runs in memory, newest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        out = []
        for j in reversed(jobs):
            if owner is not None and j.state.owner != owner:
                continue
            s = j.state.snapshot()
            s.pop("series")
            out.append(s)
        return out

    def queued(self) -> list[str]:
        return [r for r, j in list(self._jobs.items()) if j.state.status == "queued"]

    def subscribe(self, run_id: str, callback: Callable[[Event], None]) -> Callable[[], None]:
        job = self._job(run_id)
        job.subscribers.append(callback)
        return lambda: job.subscribers.remove(callback) if callback in job.subscribers else None

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.05) -> str:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(run_id)
            if st not in ACTIVE:
                return st
            if end is not None and time.monotonic() > end:
                return st
            time.sleep(poll)

    def wait_for(self, run_id: str, status: str, timeout: float = 30, poll: float = 0.02) -> bool:
        """Wait until a run reaches ``status``; False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.status(run_id) == status:
                return True
            time.sleep(poll)
        return False

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for j in jobs:
            if j.state.status in ACTIVE:
                j.control.stop()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join(timeout=30)

    # -- internals -------------------------------------------------------------------------------
    def _job(self, run_id: str) -> _Job:
        job = self._jobs.get(run_id)
        if job is None:
            raise KeyError(f"run {run_id} is not managed by this engine")
        return job

    def _trim(self) -> None:
        finished = [r for r, j in self._jobs.items() if j.state.status not in ACTIVE]
        for r in finished[: max(0, len(finished) - self.KEEP_FINISHED)]:
            del self._jobs[r]

    def _publish(self, job: _Job, ev: Event) -> None:
        job.state.apply(ev)
        for cb in list(job.subscribers):
            try:
                cb(ev)
            except Exception:  # a broken subscriber must not kill the run
                pass

    def _set_status(self, job: _Job, status: str, error: str | None = None, tb: str | None = None):
        self.store.set_status(job.state.run_id, status, error)
        self._publish(job, {"type": "status", "status": status, "error": error, "traceback": tb})

    def _worker(self) -> None:
        import torch
        torch.set_num_threads(1)   # two runs with more threads each were 5-20x slower on 2 cores
        while True:
            run_id = self._queue.get()
            if run_id is None:
                return
            job = self._jobs.get(run_id)
            if job is None or job.state.status != "queued":
                continue
            try:
                self._run(job)
            except Exception as e:  # a fault while recording a fault (e.g. the store failing):
                self._fail_quietly(job, e)   # the run is marked failed, the worker lives on

    def _fail_quietly(self, job: _Job, exc: Exception) -> None:
        msg = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        tb = traceback.format_exc()
        try:
            self.store.set_status(job.state.run_id, "failed", msg)
        except Exception:
            pass   # the store is what failed; the in-memory state still tells the page
        self._publish(job, {"type": "status", "status": "failed", "error": msg, "traceback": tb})

    def _run(self, job: _Job) -> None:
        rid = job.state.run_id
        pending: list[tuple[int, float, dict]] = []
        last_flush = [time.monotonic()]

        def flush():
            for step, epoch, values in pending:
                self.store.add_metrics(rid, step, epoch, values)
            pending.clear()
            last_flush[0] = time.monotonic()

        def emit(ev: Event) -> None:
            self._publish(job, ev)
            if ev["type"] == "metrics":
                pending.append((ev["step"], ev["epoch"], ev["values"]))
                if "test_acc" in ev["values"] or time.monotonic() - last_flush[0] > self.FLUSH_SECONDS:
                    flush()
            elif ev["type"] == "artifacts":
                for name, data in ev["data"].items():
                    self.store.add_artifact(rid, ev["step"], name, data)

        job.control.on_pause = lambda paused: self._set_status(job, "paused" if paused else "running")
        self._set_status(job, "running")
        trainer = None
        try:
            if job.control.stopped:
                raise StopRequested()
            trainer = Trainer(job.cfg, emit, job.control, self.store.checkpoint_path(rid),
                              resume=job.resume, monitors=standard_monitors())
            summary = trainer.run()
            flush()
            self.store.set_summary(rid, summary)
            self._publish(job, {"type": "summary", "summary": summary})
            self._set_status(job, "done")
        except (StopRequested, InterruptedError):
            flush()
            summary = trainer.summary if trainer else {}
            self.store.set_summary(rid, summary)
            self._publish(job, {"type": "summary", "summary": summary})
            self._set_status(job, "stopped", "stopped by the user")
        except (NonFiniteLoss, ConfigError) as e:
            flush()
            self._set_status(job, "failed", str(e))
        except Exception as e:  # any fault inside a run is recorded; the worker keeps serving
            flush()
            msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self._set_status(job, "failed", msg, traceback.format_exc())


def check_resources(cfg: RunConfig) -> None:
    """Refuse configs that would not fit in memory before they start."""
    from kdengine.run.resources import estimate_bytes, memory_limit
    need, what = estimate_bytes(cfg)
    limit = memory_limit(cfg)
    if need > limit:
        raise ConfigError(what, f"this run needs about {need / 2**30:.2f} GiB, more than the "
                                f"{limit / 2**30:.2f} GiB allowed; most of it comes from {what}, "
                                f"so make that smaller")


def snapshot_from_store(store: Store, run_id: str) -> dict:
    row = store.get_run(run_id)
    if row is None:
        raise KeyError(f"no run {run_id}")
    series = store.series(run_id)
    latest = {k: v[-1][2] for k, v in series.items() if v}
    prog = latest.get("progress", 1.0 if row["status"] == "done" else 0.0)
    arts = {}
    for name in _artifact_names(store, run_id):
        items = store.artifacts(run_id, name)
        if items:
            arts[name] = items[-1][1]
    return {"run_id": run_id, "owner": row["owner"], "name": row["name"], "config": row["config"],
            "status": row["status"], "phase": row["status"], "phase_message": "",
            "phase_progress": 1.0, "step": max((v[-1][0] for v in series.values() if v), default=0),
            "epoch": max((v[-1][1] for v in series.values() if v), default=0.0),
            "progress": prog, "eta_s": None, "error": row["error"], "traceback": None,
            "notices": [], "latest": latest, "series": series, "artifacts": arts,
            "summary": row["summary"], "created": row["created"], "version": 0}


def _artifact_names(store: Store, run_id: str) -> list[str]:
    rows = store._tx("SELECT DISTINCT name FROM artifacts WHERE run_id = ?", (run_id,)).fetchall()
    return [r["name"] for r in rows]


def train(cfg: RunConfig, emit: Emit | None = None) -> dict:
    """Run a config in this thread, without the engine's queue and store (tests, notebooks), with
    the same per-epoch monitors an engine run gets."""
    return Trainer(cfg, emit, monitors=standard_monitors()).run()
