"""Lab runs on a Ray cluster: one Ray actor per run, its events polled back to this server.

Set ``KD_RAY_ADDRESS`` (``auto``, ``ray://head:10001``, or ``local`` for a Ray instance on this
machine) and the server's engine trains every run on the cluster instead of in local worker
processes. Each run is an actor asking for one CPU (Ray queues actors beyond the cluster's CPUs);
it runs :class:`~kdengine.run.trainer.Trainer` in a thread and buffers its events, which this
executor polls a few times a second and hands to the engine, so the page's charts fill in live and
the store stays on this machine. Checkpoints are written on the node and copied back whenever they
change, so a run resumes here even though nodes share no disk. Needs ``pip install -r
requirements-cluster.txt``.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

POLL_SECONDS = 0.2


class _RunActor:
    """Lives on a Ray worker: trains one run in a thread, buffers its events for ``poll``."""

    def __init__(self, run_id: str, cfg: dict, owner: str, resume: bool, ckpt: bytes | None,
                 runs_dir: str | None):
        import tempfile
        self.run_id = run_id
        if not (runs_dir and os.path.isdir(runs_dir)):          # a node with its own disk
            runs_dir = os.path.join(tempfile.gettempdir(), "kd_runs")
        os.environ["KD_RUNS_DIR"] = runs_dir
        self.ck = Path(tempfile.mkdtemp(prefix="kd_ck_")) / f"{run_id}.pt"
        if ckpt:
            self.ck.write_bytes(ckpt)
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.ck_mtime = self.ck.stat().st_mtime if self.ck.exists() else None
        from kdengine.run.trainer import Control
        self.control = Control()
        self.control.on_pause = lambda p: self._emit({"type": "status",
                                                      "status": "paused" if p else "running"})
        threading.Thread(target=self._run, args=(cfg, resume), daemon=True).start()

    def _emit(self, ev: dict) -> None:
        with self.lock:
            self.events.append(ev)

    def _run(self, cfg: dict, resume: bool) -> None:
        import torch
        torch.set_num_threads(1)
        from kdengine.core.config import RunConfig
        from kdengine.run.monitors import standard_monitors
        from kdengine.run.trainer import Trainer
        from kdengine.run.workers import execute
        outcome = execute(lambda: Trainer(RunConfig.from_dict(cfg), self._emit, self.control,
                                          self.ck, resume=resume, monitors=standard_monitors()),
                          self.control)
        self._emit({"type": "_end", **outcome})

    def poll(self) -> tuple[list[dict], bytes | None]:
        """The events since the last poll, and the checkpoint's bytes if it changed."""
        with self.lock:
            out, self.events = self.events, []
        data = None
        if self.ck.exists() and self.ck.stat().st_mtime != self.ck_mtime:
            self.ck_mtime = self.ck.stat().st_mtime
            data = self.ck.read_bytes()
        return out, data

    def command(self, verb: str) -> None:
        getattr(self.control, verb)()


class RayExecutor:
    """An executor whose slots are the cluster's CPUs; the engine treats it like a worker."""

    kind = "ray"

    def __init__(self, index: int, address: str, on_event: Callable[[str, dict], None],
                 on_death: Callable[[Any, str], None]):
        import ray
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address,
                     include_dashboard=False, ignore_reinit_error=True)
        self.index = index
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.active: set[str] = set()
        self.ready = threading.Event()
        self.ready.set()
        self._on_event, self._on_death = on_event, on_death
        self._actors: dict[str, Any] = {}
        self._ck_paths: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._remote = ray.remote(num_cpus=1, max_concurrency=4)(_RunActor)
        threading.Thread(target=self._poll_loop, name="kd-ray-poll", daemon=True).start()

    def start(self, job) -> None:
        rid = job.state.run_id
        self.active.add(rid)
        ck = Path(job.checkpoint_path)
        actor = self._remote.remote(rid, job.cfg.to_dict(), job.state.owner, job.resume,
                                    ck.read_bytes() if job.resume and ck.exists() else None,
                                    os.environ.get("KD_RUNS_DIR"))
        with self._lock:
            self._actors[rid] = actor
            self._ck_paths[rid] = ck
        if job.control.paused:
            actor.command.remote("pause")

    def command(self, run_id: str, verb: str) -> None:
        actor = self._actors.get(run_id)
        if actor is not None:
            actor.command.remote(verb)

    def close(self, wait: bool = True) -> None:
        self._closed = True
        import ray
        for actor in list(self._actors.values()):
            try:
                actor.command.remote("stop")
            except Exception:
                pass
        if wait:
            end = time.monotonic() + 30
            while self._actors and time.monotonic() < end:
                time.sleep(POLL_SECONDS)
        for actor in list(self._actors.values()):
            ray.kill(actor)

    def _poll_loop(self) -> None:
        import ray
        while not (self._closed and not self._actors):
            with self._lock:
                actors = dict(self._actors)
            for rid, actor in actors.items():
                try:
                    events, ck = ray.get(actor.poll.remote(), timeout=60)
                except ray.exceptions.GetTimeoutError:
                    continue            # still being scheduled (no free CPU yet)
                except Exception as e:   # the actor or its node died
                    self._forget(rid, actor)
                    self._on_death_of(rid, f"{type(e).__name__}")
                    continue
                if ck is not None:
                    _write_atomic(self._ck_paths[rid], ck)
                for ev in events:
                    try:
                        self._on_event(rid, ev)
                    except Exception:
                        traceback.print_exc()
                    if ev["type"] == "_end":
                        self._forget(rid, actor)
                        ray.kill(actor)
            time.sleep(POLL_SECONDS)

    def _forget(self, rid: str, actor) -> None:
        with self._lock:
            self._actors.pop(rid, None)
            self._ck_paths.pop(rid, None)

    def _on_death_of(self, rid: str, why: str) -> None:
        """One run's actor died: tell the engine about that run only (the executor lives on)."""
        lost = _OneRun(self, rid)
        self._on_death(lost, f"Ray actor lost: {why}")


class _OneRun:
    """Stands for the part of a RayExecutor that died: just one run."""

    def __init__(self, ex: RayExecutor, rid: str):
        self.ex, self.active, self.index = ex, {rid}, ex.index
        ex.active.discard(rid)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
