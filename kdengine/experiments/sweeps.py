"""Sweeps: a grid (or random sample) over named dotted config fields, e.g. ``method.params.T`` x
``method.params.soft_weight``, filled in cell by cell while a page watches.

A sweep trains nothing itself: every cell is a run it submits to the engine, which queues it fairly
among everyone's runs, checks its resources and trains it on its executor (threads, worker processes
or a Ray cluster, whichever the engine uses). Two backends say how the cells are submitted:

* ``local`` — one run per cell (``Engine.submit``);
* ``vectorised`` — cells that differ only in the method's per-student knobs (T, the loss weights)
  are submitted as groups (``Engine.submit_group``) and train as stacked students in one pass
  (kdengine/run/group.py); cells that cannot stack (a method that trains one student at a time)
  are submitted one by one, and ``Sweep.notices`` says so.

Each cell is an ordinary run in the store (``parent`` = the sweep id) and is identified by its config
hash: a sweep started again (after a crash, a stop, or by another user asking for the same grid)
reuses finished runs instead of training them again, and an interrupted run continues from its last
checkpoint. The sweep itself (spec and cell state) is a row in the store's ``sweeps`` table; starting,
stopping, resuming and the registry of live sweeps are :class:`kdengine.experiments.base.Experiment`'s.
"""
from __future__ import annotations

import itertools
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from kdengine.core.config import RunConfig, flatten
from kdengine.core.roles import Caller
from kdengine.core.knobs import ConfigError
from kdengine.core.store import ACTIVE, FINAL
from kdengine.experiments.base import Experiment, Spec

BACKENDS = ("local", "vectorised")
LIVE_KEYS = ("test_acc", "train_acc", "agreement", "kl_test")    # a training cell's heatmap values
# The page's default: few labels with the student alone as reference, trained with SGD, where
# T and the soft weight both show (under Adam every cell was +13 to +14 points: one flat colour).
DEFAULT_PRESET = "digits-50-labels-sgd"
DEFAULT_AXES = {"method.params.T": [1.0, 2.0, 4.0, 8.0],
                "method.params.soft_weight": [0.1, 0.25, 0.5, 1.0]}


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
        if self.spec.backend == "vectorised":
            note = fallback_notice([cfg for _, cfg in self._configs])
            self.notices += [note] if note else []
        self._check_resources()

    def _check_resources(self) -> None:
        """Refuse a sweep with a cell (or a group of stacked cells) too big for this machine before
        anything runs, naming the field to make smaller (the engine checks again when it queues)."""
        from kdengine.run.engine import check_resources
        for unit in self._units(range(len(self.cells))):
            check_resources(self._configs[unit[0]][1], stacked=len(unit))

    # -- control ---------------------------------------------------------------------------------
    def stop(self, caller: Caller | None = None) -> None:
        super().stop(caller)
        self._stop_runs()

    def _stop_runs(self) -> None:
        for c in self.cells:
            if c.run_id and c.status in ACTIVE:
                try:
                    self.engine.stop(c.run_id)
                except KeyError:     # another process's run: not this engine's to stop
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
                self._submit(pending)
                while not self._stop.is_set() and any(
                        self.cells[i].status in ACTIVE + ("pending",) for i in pending):
                    if self._refresh():
                        self._save()
                    time.sleep(0.1)
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

    def _units(self, idx, alone=frozenset()) -> list[list[int]]:
        """The cells as the engine gets them: groups of cells that stack (backend vectorised; up to
        a group's size limit) first, then single cells. Cells in ``alone`` are single."""
        from kdengine.run.group import MAX_SIZE
        from kdengine.run.stacked import group_key
        groups: dict[str, list[int]] = {}
        singles = []
        for i in idx:
            cfg = self._configs[i][1]
            if self.spec.backend == "vectorised" and i not in alone and can_vectorise(cfg):
                groups.setdefault(group_key(cfg), []).append(i)
            else:
                singles.append([i])
        chunks = [m[k:k + MAX_SIZE] for m in groups.values() for k in range(0, len(m), MAX_SIZE)]
        return chunks + singles

    def _submit(self, idx: list[int]) -> None:
        """Hand the pending cells to the engine. A cell with an earlier run of this sweep continues
        that run alone (from its checkpoint); the others go as groups or one by one."""
        old = {i: rid for i in idx if (rid := self._resumable(self.cells[i]))}
        for unit in self._units(idx, alone=set(old)):
            if self._stop.is_set():
                break
            cfgs = [self._configs[i][1] for i in unit]
            if len(unit) > 1:
                rids = self.engine.submit_group(cfgs, owner=self.owner, names=[c.name for c in cfgs],
                                                parent=self.id)
            elif unit[0] in old:
                rids = [self.engine.resume_run(old[unit[0]])]
            else:
                rids = [self.engine.submit(cfgs[0], owner=self.owner, name=cfgs[0].name,
                                           parent=self.id)]
            with self._lock:
                for i, rid in zip(unit, rids):
                    c = self.cells[i]
                    c.run_id, c.status = rid, "queued"
                    c.backend = "vectorised" if len(unit) > 1 else "local"
            self._save()
        if self._stop.is_set():      # a stop that came while the cells were being handed over
            self._stop_runs()

    def _refresh(self) -> bool:
        """Pull each unfinished cell's status, live values and (once final) summary from its run's
        snapshot; True when a status changed."""
        snaps = {s.run_id: s for s in self.engine.runs(self.owner) if s.parent == self.id}
        changed = False
        with self._lock:
            for c in self.cells:
                if not c.run_id or c.status in FINAL:
                    continue
                snap = snaps.get(c.run_id)
                if snap is None:          # no longer held in memory: read back from the store
                    try:
                        snap = self.engine.snapshot(c.run_id)
                    except KeyError:
                        continue
                if snap.status == "running" and "test_acc" in snap.latest:
                    c.live = {k: snap.latest[k] for k in LIVE_KEYS if k in snap.latest}
                if snap.status != c.status:
                    c.status, changed = snap.status, True
                    if snap.status in FINAL:
                        c.summary = dict(snap.summary)
        return changed

    def _state(self) -> dict:
        return {"cells": [asdict(c) for c in self.cells], "error": self.error,
                "notices": self.notices}


# ---------------------------------------------------------------------------------------------
# which cells stack (the rule itself: kdengine.run.stacked)
# ---------------------------------------------------------------------------------------------
def can_vectorise(cfg: RunConfig) -> bool:
    from kdengine.run.stacked import why_not_stacked
    return not why_not_stacked(cfg)


def fallback_notice(cfgs: list[RunConfig]) -> str:
    """One line for the Sweeps page and the CLI when some cells cannot train stacked ("" when all
    can)."""
    from kdengine.run.stacked import why_not_stacked
    counts: dict[str, int] = {}
    for cfg in cfgs:
        reason = why_not_stacked(cfg)
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
    if not counts:
        return ""
    n = sum(counts.values())
    return (f"{n} of {len(cfgs)} cells run on the local backend, one run each, not vectorised: "
            + "; ".join(counts))


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


def resume_sweep(engine, sweep_id: str, backend: str | None = None,
                 caller: Caller | None = None) -> Sweep:
    """Start a stored sweep again under the same id: finished cells are reused (matched by config
    hash), interrupted runs continue from their checkpoints, only the rest are trained."""
    return Sweep.resume(engine, sweep_id, caller, backend=backend or None)


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
