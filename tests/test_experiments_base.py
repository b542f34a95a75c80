"""kdengine/experiments/base.py: what sweeps and the TA gap share: the driver thread, the stored
row and its final status, stop, resume under the same id, and the registry of live experiments;
and, from the source, that no experiment trains a run or writes a run's row itself."""
from __future__ import annotations

import ast
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from kdengine import is_running, shown_status
from kdengine.experiments.base import Experiment, Spec


@dataclass
class ToySpec(Spec):
    steps: int = 3
    fail: bool = False
    name: str = ""

    def validate(self) -> "ToySpec":
        return self


class Toy(Experiment):
    """Counts to ``steps``; with ``fail`` it raises; a test may hold it at ``gate``."""
    kind, label, id_prefix, spec_cls = "toy", "toy experiment", "toy", ToySpec

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.count, self.gate = 0, threading.Event()

    def _drive(self) -> str:
        if not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        for _ in range(self.spec.steps):
            if self._stop.is_set():
                break
            self.count += 1
        if self.spec.fail:
            raise ValueError("asked to fail")
        return "done"

    def _state(self) -> dict:
        return {"count": self.count, "error": self.error}


class Other(Toy):
    kind, label = "other", "other experiment"


def _finish(exp: Experiment) -> str:
    exp.gate.set()
    return exp.wait(30)


def test_a_finished_experiment_is_stored_with_its_state_and_found_by_kind(engine):
    exp = Toy.launch(engine, {"steps": 4, "name": "four", "unknown_key": 1})
    assert exp.id.startswith("toy-") and is_running(exp.id)
    assert engine.store.get_sweep(exp.id)["status"] == "running"     # stored before it runs
    assert Toy.live(exp.id) is exp and Other.live(exp.id) is None   # one registry, typed look-up
    assert _finish(exp) == "done" and exp.done and not is_running(exp.id)
    row = engine.store.get_sweep(exp.id)
    assert (row["kind"], row["status"], row["state"]["count"], row["name"]) == ("toy", "done", 4, "four")


def test_an_error_fails_it_naming_the_error_and_a_stop_stops_it(engine):
    bad = Toy.launch(engine, ToySpec(fail=True))
    assert _finish(bad) == "failed" and bad.error == "ValueError: asked to fail"
    assert engine.store.get_sweep(bad.id)["state"]["error"] == "ValueError: asked to fail"
    stopped = Toy.launch(engine, ToySpec(steps=100))
    stopped.stop()
    assert _finish(stopped) == "stopped" and stopped.count == 0
    assert engine.store.get_sweep(stopped.id)["status"] == "stopped"


def test_resume_restarts_the_stored_spec_under_its_id_and_checks_the_kind(engine):
    first = Toy.launch(engine, ToySpec(steps=2), owner="alice")
    first.stop()
    _finish(first)
    again = Toy.resume(engine, first.id, steps=5)            # a spec field changed on resume
    assert again is not first and again.id == first.id and again.owner == "alice"
    assert Toy.resume(engine, first.id) is again              # still running: the same one
    assert _finish(again) == "done" and again.count == 5
    with pytest.raises(KeyError, match="no other experiment"):
        Other.resume(engine, first.id)                        # a toy row is not an "other"
    with pytest.raises(KeyError, match="no toy experiment"):
        Toy.resume(engine, "toy-missing")


def test_a_stored_running_experiment_with_no_driver_shows_as_interrupted(engine):
    assert shown_status("running", None) == "interrupted"
    assert shown_status("done", None) == "done"
    exp = Toy.launch(engine, ToySpec())
    assert shown_status("interrupted", exp) == "running"      # the live driver wins
    _finish(exp)


# -- experiments only submit, wait and read -----------------------------------------------------------
EXPERIMENTS = Path(__file__).resolve().parent.parent / "kdengine" / "experiments"
# What builds or drives a trainer (kdengine/run/units.py is the one place a trainer is built) ...
TRAINS = {"Trainer", "GroupTrainer", "train_unit", "make_trainer", "train"}
TRAINING_MODULES = {"kdengine.run.units", "kdengine.run.trainer", "kdengine.run.executors",
                    "kdengine.run.ray_executor", "kdengine.run.recorder"}
# ... and what writes a run's row, points, artifacts or checkpoint (the engine's recorder does).
WRITES = {"create_run", "add_metrics", "set_status", "set_summary",
          "add_artifact", "truncate_metrics", "save_checkpoint", "write_bytes_atomic"}


def experiment_violations(folder: Path) -> list[str]:
    """Lines of ``folder``'s modules that train or write runs themselves."""
    bad = []
    for f in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            where = f"{f.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdengine."):
                if node.module in TRAINING_MODULES:
                    bad.append(f"{where} imports {node.module}")
                bad += [f"{where} imports {a.name}" for a in node.names
                        if (a.name in TRAINS and node.module.startswith("kdengine.run"))
                        or a.name in WRITES]
            elif isinstance(node, ast.Import):
                bad += [f"{where} imports {a.name}" for a in node.names if a.name in TRAINING_MODULES]
            elif isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name in WRITES:
                    bad.append(f"{where} calls {name}")
    return bad


def test_experiments_train_nothing_and_write_no_runs_themselves():
    """Sweeps, searches, the TA gap and the phenomena suite submit runs to the engine, wait and
    read; the only row they write is their own (``save_sweep``)."""
    assert experiment_violations(EXPERIMENTS) == []


def test_the_source_check_sees_a_module_that_trains_and_writes(tmp_path):
    (tmp_path / "rogue.py").write_text(
        "from kdengine.run.trainer import Trainer\n"
        "from kdengine.core.checkpoints import save_checkpoint\n"
        "def go(cfg, store, rid):\n"
        "    Trainer(cfg).run()\n"
        "    store.set_status(rid, 'done')\n")
    assert experiment_violations(tmp_path) == [
        "rogue.py:1 imports kdengine.run.trainer", "rogue.py:1 imports Trainer",
        "rogue.py:2 imports save_checkpoint", "rogue.py:5 calls set_status"]
