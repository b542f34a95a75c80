"""Teacher-assistant chains: teacher -> TA1 -> ... -> student (Mirzadeh et al. 2019, arXiv 1902.03393).

When the teacher is much larger than the student, the student learns less from it; distilling
through intermediate-size teacher assistants (TAs) closes part of that gap. Each link here is a full
distillation run in the engine's queue whose trained student becomes the next link's teacher
(``teacher.source = "run"``, ``teacher.checkpoint = <run id>``).

Links are found by config hash before they are trained: a TA trained once serves every chain that
names the same config (same teacher run, same TA model, same method and training settings), so a
second chain through the same TA trains only its own new links.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from kdengine.core.config import ModelConfig, RunConfig, TeacherConfig
from kdengine.models.families import model_label
from kdengine.core.store import ACTIVE

_submit_lock = threading.Lock()     # find-or-submit must be atomic, or two chains train one TA twice


class ChainError(RuntimeError):
    """A link of a chain failed or was stopped."""


@dataclass
class Link:
    run_id: str
    student: str                 # model label
    teacher: str
    reused: bool                 # True: an existing run with the same config hash served
    summary: dict = field(default_factory=dict)


def run_teacher(run_id: str, model: ModelConfig | dict) -> TeacherConfig:
    """A teacher config that loads the student of a finished run."""
    m = model if isinstance(model, ModelConfig) else ModelConfig(**model)
    return TeacherConfig(source="run", model=ModelConfig(**m.__dict__), checkpoint=run_id)


def link_config(base: RunConfig, teacher: TeacherConfig, student: ModelConfig) -> RunConfig:
    """``base`` (data, method, training) with this link's teacher and student."""
    cfg = base.copy()
    cfg.teacher = TeacherConfig(**{**teacher.__dict__, "model": ModelConfig(**teacher.model.__dict__)})
    cfg.student = ModelConfig(**student.__dict__)
    return cfg.validate()


def scratch_config(base: RunConfig, model: ModelConfig) -> RunConfig:
    """``model`` trained alone with cross-entropy (no teacher), canonicalised so that every caller
    asking for "this size from scratch" gets the same config hash."""
    cfg = base.copy()
    cfg.teacher = TeacherConfig(source="none")
    cfg.student = ModelConfig(**model.__dict__)
    cfg.method.name, cfg.method.params = "ce", {}
    cfg.train.baseline = False
    return cfg.validate()


def find_reusable(store, cfg: RunConfig) -> tuple[str | None, str | None]:
    """(finished run id, active run id) with this config's hash; the finished one must still have
    its checkpoint, the active one must belong to this process (others are marked interrupted)."""
    done = active = None
    for row in store.runs_by_hash(cfg.hash, ("done",) + ACTIVE):
        if row["status"] == "done" and done is None and store.checkpoint_path(row["id"]).exists():
            done = row["id"]
        elif row["status"] in ACTIVE and active is None and row["pid"] == os.getpid():
            active = row["id"]
    return done, active


def ensure_run(engine, cfg: RunConfig, owner: str = "", name: str = "", parent: str | None = None,
               should_stop: Callable[[], bool] | None = None, poll: float = 0.05) -> tuple[str, bool]:
    """Run ``cfg`` unless an identical run exists; wait for it. Returns (run id, reused)."""
    with _submit_lock:
        done, active = find_reusable(engine.store, cfg)
        if done:
            return done, True
        rid = active or engine.submit(cfg, owner=owner, name=name, parent=parent)
    reused = active is not None
    while True:
        st = engine.status(rid)
        if st not in ACTIVE:
            break
        if should_stop and should_stop():
            if not reused:
                engine.stop(rid)
            raise ChainError(f"stopped while run {rid} was {st}")
        time.sleep(poll)
    if st != "done":
        row = engine.store.get_run(rid)
        raise ChainError(f"run {rid} ({model_label(cfg.student)}) {st}: {row and row['error']}")
    return rid, reused


def run_chain(engine, base: RunConfig, students: list[ModelConfig], teacher: TeacherConfig | None = None,
              owner: str = "", parent: str | None = None, name: str = "chain",
              on_link: Callable[[Link], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> list[Link]:
    """Distil ``teacher`` (default ``base.teacher``) into ``students[0]``, that into ``students[1]``,
    ... Each link waits for the previous one; the last entry is the final student."""
    teacher = teacher or base.teacher
    links: list[Link] = []
    for model in students:
        cfg = link_config(base, teacher, model)
        t_label = model_label(teacher.model) + (f" (run {teacher.checkpoint})"
                                                if teacher.source == "run" else "")
        rid, reused = ensure_run(engine, cfg, owner=owner, parent=parent,
                                 name=f"{name}: {model_label(teacher.model)} -> {model_label(model)}",
                                 should_stop=should_stop)
        row = engine.store.get_run(rid)
        link = Link(rid, model_label(model), t_label, reused, row["summary"] if row else {})
        links.append(link)
        if on_link:
            on_link(link)
        teacher = run_teacher(rid, model)
    return links
