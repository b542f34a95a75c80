"""Sweeps: a grid (or random sample) over named dotted config fields, e.g. ``method.params.T`` x
``method.params.soft_weight``, filled in cell by cell while a page watches.

Three backends behind one interface (:class:`Sweep`):

* ``local`` — every cell is submitted to the Engine's queue and run by its workers;
* ``vectorised`` — cells that differ only in method knobs train together in one pass
  (:mod:`kdengine.experiments.vectorised`); cells it cannot take (a method that does not support
  stacked students) run on ``local``, and ``Sweep.notices`` says so;
* ``ray`` — Ray Tune trials (:mod:`kdengine.experiments.ray_backend`, optional ``requirements-cluster.txt``).

Whatever the backend, each cell is an ordinary run in the store (``parent`` = the sweep id) and a
cell is identified by its config hash: a sweep that is started again (after a crash, a stop, or by
another user asking for the same grid) reuses finished runs instead of training them again, and an
interrupted local run continues from its last checkpoint. The sweep itself (spec and cell state) is
a row in the store's ``sweeps`` table; starting, stopping, resuming and the registry of live sweeps
are :class:`kdengine.experiments.base.Experiment`'s.
"""
from __future__ import annotations

import itertools
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from kdengine.core.config import RunConfig, flatten
from kdengine.core.knobs import ConfigError
from kdengine.core.store import ACTIVE, FINAL
from kdengine.experiments.base import Experiment, Spec

BACKENDS = ("local", "vectorised", "ray")
# The page's default: few labels with the student alone as reference, where T and the soft weight
# matter (with all labels on digits the student alone wins and the grid teaches "T hurts").
DEFAULT_PRESET = "digits-50-labels"
DEFAULT_AXES = {"method.params.T": [1.0, 2.0, 4.0, 8.0],
                "method.params.soft_weight": [0.25, 0.5, 0.75, 1.0]}


@dataclass
class SweepSpec(Spec):
    base: dict                                   # a RunConfig as a dict
    axes: dict[str, list]                        # dotted field -> values; the first two are x, y
    mode: str = "grid"                           # grid | random
    n_random: int = 8                            # cells drawn when mode = random
    seed: int = 0
    backend: str = "local"
    metric: str = "final_test_acc"               # a summary key shown by the heatmap
    name: str = ""

    def validate(self) -> "SweepSpec":
        if self.backend not in BACKENDS:
            raise ConfigError("backend", f"must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.mode not in ("grid", "random"):
            raise ConfigError("mode", f"must be grid or random; got {self.mode!r}")
        if not self.axes:
            raise ConfigError("axes", "a sweep needs at least one knob")
        fields = flatten(RunConfig.from_dict(self.base).to_dict())
        for key, values in self.axes.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(key, "needs a non-empty list of values")
            if key not in fields and not key.startswith("method.params."):
                raise ConfigError(key, "no such config field")
        return self


def cell_overrides(spec: SweepSpec) -> list[dict[str, Any]]:
    """The cells as override dicts, grid order (last axis fastest) or a seeded random sample."""
    keys = list(spec.axes)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.axes[k] for k in keys))]
    if spec.mode == "random" and spec.n_random < len(grid):
        grid = random.Random(spec.seed).sample(grid, spec.n_random)
    return grid


def cell_configs(spec: SweepSpec) -> list[tuple[dict, RunConfig]]:
    """Every cell's config, validated before anything starts (a bad value fails the whole sweep
    up front, naming the field)."""
    base = RunConfig.from_dict(spec.base)
    out = []
    for ov in cell_overrides(spec):
        cfg = base.with_overrides(ov)
        cfg.name = spec.name + " " + ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in ov.items())
        out.append((ov, cfg))
    return out


@dataclass
class Cell:
    overrides: dict
    hash: str
    run_id: str | None = None
    status: str = "pending"          # pending | queued | running | done | failed | stopped ...
    reused: bool = False
    backend: str = ""
    summary: dict = field(default_factory=dict)
    live: dict = field(default_factory=dict)     # latest epoch's metrics while the cell trains


class Sweep(Experiment):
    """One sweep and the driver thread that fills it in. ``cells`` is safe to read from any thread."""

    kind, label, id_prefix, spec_cls = "sweep", "sweep", "sw", SweepSpec

    def __init__(self, engine, spec: SweepSpec, owner: str = "", exp_id: str | None = None):
        super().__init__(engine, spec, owner, exp_id)
        self._configs = cell_configs(self.spec)
        self.cells = [Cell(ov, cfg.hash) for ov, cfg in self._configs]
        # Lines the Sweeps page and the CLI show with the sweep, e.g. cells not vectorised.
        self.notices: list[str] = self._plan_notices()
        self._control = None        # the vectorised pass's trainer Control, while one runs

    # -- control ---------------------------------------------------------------------------------
    def stop(self) -> None:
        super().stop()
        if self._control is not None:
            self._control.stop()
        for c in self.cells:
            if c.run_id and c.status in ACTIVE:
                try:
                    self.engine.stop(c.run_id)
                except KeyError:     # not an engine run (vectorised / ray): their loops see _stop
                    pass

    # -- reading ---------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """One row per cell: the knob values, status, run id and every final_* summary value."""
        out = []
        for c in self.cells:
            row = dict(c.overrides)
            row.update(status=c.status, run_id=c.run_id, reused=c.reused)
            if c.status != "done" and c.live:       # partial: the heatmap shows it as in progress
                row.update({f"final_{k}": v for k, v in c.live.items()}, live=True)
            row.update({k: v for k, v in c.summary.items() if isinstance(v, (int, float))})
            out.append(row)
        return out

    def progress(self) -> float:
        return sum(c.status in FINAL for c in self.cells) / max(1, len(self.cells))

    # -- driver ----------------------------------------------------------------------------------
    def _drive(self) -> str:
        try:
            pending = self._reuse_finished()
            if pending and not self._stop.is_set():
                backend = self.spec.backend
                if backend == "vectorised":
                    pending = self._run_vectorised(pending)
                elif backend == "ray":
                    self._run_ray(pending)
                    pending = []
                if pending:
                    self._run_local(pending)
            self._settle()
            return "done" if all(c.status == "done" for c in self.cells) else "failed"
        finally:                   # the cells' last statuses go into the final save
            self._refresh()

    def _settle(self, timeout: float = 60.0) -> None:
        """After a stop, wait until no cell is still winding down, so a resume right away finds
        each interrupted run (and continues it) instead of starting a duplicate."""
        end = time.monotonic() + timeout
        while True:
            self._refresh()
            if not any(c.run_id and c.status in ACTIVE for c in self.cells) or \
                    time.monotonic() > end:
                return
            time.sleep(0.05)

    def _reuse_finished(self) -> list[int]:
        """Cells whose config already has a finished run are filled from it; returns the rest."""
        pending = []
        for i, c in enumerate(self.cells):
            rows = self.store.runs_by_hash(c.hash, ("done",))
            if rows:
                c.run_id, c.status, c.reused = rows[0]["id"], "done", True
                c.summary = rows[0]["summary"]
            else:
                pending.append(i)
        self._save()
        return pending

    def _resumable(self, c: Cell) -> str | None:
        """This sweep's interrupted / stopped / failed run of this cell, to continue under its id
        (from its last checkpoint when it has one) instead of adding a second row."""
        for row in self.store.runs_by_hash(c.hash, ("interrupted", "stopped", "failed")):
            if row["parent"] == self.id:
                return row["id"]
        return None

    def _rows_for(self, idx: list[int], backend: str) -> list[str]:
        """Store rows for cells a non-engine backend fills in: old rows of this sweep or new ones."""
        from kdengine.run.trainer import versions
        rids = []
        for i in idx:
            c, cfg = self.cells[i], self._configs[i][1]
            rid = self._resumable(c)
            if rid:
                self.store.set_status(rid, "queued")
            else:
                rid = self.store.create_run(cfg.to_dict(), cfg.hash, owner=self.owner, name=cfg.name,
                                            versions=versions(), parent=self.id)
            c.run_id, c.status, c.backend = rid, "queued", backend
            rids.append(rid)
        self._save()
        return rids

    def _run_local(self, idx: list[int]) -> None:
        for i in idx:
            if self._stop.is_set():
                return
            c, cfg = self.cells[i], self._configs[i][1]
            old = self._resumable(c)
            c.backend = "local"
            c.run_id = (self.engine.resume_run(old) if old else
                        self.engine.submit(cfg, owner=self.owner, name=cfg.name, parent=self.id))
            c.status = "queued"
        self._save()
        while not self._stop.is_set() and any(self.cells[i].status in ACTIVE + ("pending",)
                                              for i in idx):
            if self._refresh():
                self._save()
            time.sleep(0.1)

    def _plan_notices(self) -> list[str]:
        if self.spec.backend != "vectorised":
            return []
        from kdengine.experiments.vectorised import fallback_notice
        note = fallback_notice([cfg for _, cfg in self._configs])
        return [note] if note else []

    def _run_vectorised(self, idx: list[int]) -> list[int]:
        """Train each group of stackable cells in one pass; return the cells left for local."""
        from kdengine.experiments.vectorised import can_vectorise, group_key, train_group
        from kdengine.run.trainer import Control, StopRequested
        self._control = Control()
        groups: dict[str, list[int]] = {}
        rest = []
        for i in idx:
            cfg = self._configs[i][1]
            if can_vectorise(cfg):
                groups.setdefault(group_key(cfg), []).append(i)
            else:
                rest.append(i)
        for members in groups.values():
            if self._stop.is_set():
                break
            cfgs = [self._configs[i][1] for i in members]
            rids = self._rows_for(members, "vectorised")
            def on_epoch(epoch, evals, members=members):
                for i, ev in zip(members, evals):
                    self.cells[i].live = {**ev, "epoch": epoch}
                self._refresh()
            try:
                train_group(cfgs, rids, self.store, control=self._control, on_epoch=on_epoch)
            except (StopRequested, ConfigError, RuntimeError, ValueError):
                pass            # the runs carry the status and error; the sweep goes on
            self._refresh()
            self._save()
        return rest

    def _run_ray(self, idx: list[int]) -> None:
        from kdengine.experiments.ray_backend import run_cells
        cfgs = [self._configs[i][1] for i in idx]
        rids = self._rows_for(idx, "ray")
        run_cells(list(zip(cfgs, rids)), self.store, should_stop=self._stop.is_set,
                  on_result=self._refresh)
        self._refresh()

    def _refresh(self) -> bool:
        """Pull each cell's status (and summary once final) from the engine / store."""
        changed = False
        with self._lock:
            for c in self.cells:
                if not c.run_id or (c.status in FINAL and c.summary):
                    continue
                try:
                    st = self.engine.status(c.run_id)
                except KeyError:
                    continue
                if st == "running" and c.backend == "local":
                    latest = self.engine.snapshot(c.run_id).latest   # in memory: cheap
                    if "test_acc" in latest:
                        c.live = {k: latest[k] for k in ("test_acc", "train_acc", "agreement",
                                                         "kl_test") if k in latest}
                if st != c.status or (st in FINAL and not c.summary):
                    c.status, changed = st, True
                    if st in FINAL:
                        row = self.store.get_run(c.run_id)
                        c.summary = (row or {}).get("summary") or {}
        return changed

    def _state(self) -> dict:
        return {"cells": [asdict(c) for c in self.cells], "error": self.error,
                "notices": self.notices}


def ray_available() -> bool:
    """Whether the ray backend can run here (checked without importing Ray, which is slow)."""
    import importlib.util
    return importlib.util.find_spec("ray") is not None


def parse_values(text: str) -> list:
    """'1, 2, 4.5, adam' -> [1, 2, 4.5, 'adam'] (YAML scalars, so numbers and booleans type)."""
    import yaml
    out = []
    for item in (t.strip() for t in str(text).split(",")):
        if item:
            try:
                out.append(yaml.safe_load(item))
            except yaml.YAMLError:
                out.append(item)
    return out


def start_sweep(engine, spec: SweepSpec | dict, owner: str = "") -> Sweep:
    return Sweep.launch(engine, spec, owner)


def get_sweep(sweep_id: str) -> Sweep | None:
    """A sweep driven by this process (pages find theirs again after a rerun)."""
    return Sweep.live(sweep_id)


def resume_sweep(engine, sweep_id: str, backend: str | None = None) -> Sweep:
    """Start a stored sweep again under the same id: finished cells are reused (matched by config
    hash), interrupted local runs continue from their checkpoints, only the rest are trained."""
    return Sweep.resume(engine, sweep_id, backend=backend or None)


def stored_cells(store, sweep_id: str) -> list[dict]:
    """Rows for a stored sweep not driven by this process (e.g. after a restart)."""
    row = store.get_sweep(sweep_id)
    if row is None:
        return []
    out = []
    for c in row["state"].get("cells", []):
        r = dict(c["overrides"])
        run = store.get_run(c["run_id"]) if c.get("run_id") else None
        r.update(status=run["status"] if run else c["status"], run_id=c.get("run_id"),
                 reused=c.get("reused", False))
        if run:
            r.update({k: v for k, v in run["summary"].items() if isinstance(v, (int, float))})
        out.append(r)
    return out
