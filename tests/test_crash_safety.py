"""A training process killed with SIGKILL loses nothing that was flushed, and its run
resumes from the last checkpoint.

A real ``python -m kdengine train`` process is started on its own data folder and killed without
warning once it has written metrics and a checkpoint. Then: the store opens, the run is
``interrupted``, every metric row seen before the kill is still there, and ``python -m kdengine
resume RUN`` continues from the checkpoint to ``done``, with metrics that carry on after the
checkpoint step (no gap, no duplicate epoch).

Most of this test's time is the child interpreter importing torch and sklearn.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdengine import Store, cli
from kdengine.core.checkpoints import safe_load

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 6
CONFIG = {
    "name": "crash-me",
    "data": {"name": "digits"},
    "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 1, "width": 32}, "epochs": 2},
    "student": {"arch": "mlp", "depth": 1, "width": 64},
    "method": {"name": "hinton"},
    "train": {"epochs": EPOCHS, "batch_size": 16, "lr": 0.003, "log_every": 5,
              "checkpoint_every": 1},
}

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def _env(root: Path) -> dict:
    return {**os.environ, "KD_RUNS_DIR": str(root), "OMP_NUM_THREADS": "1", "KD_FLUSH_SECONDS": "0",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _rows(db: Path) -> tuple[list[tuple], list[tuple]]:
    """(runs rows, metric rows) read through a separate connection, as another process would."""
    con = sqlite3.connect(db, timeout=10)
    try:
        runs = con.execute("SELECT id, status FROM runs").fetchall()
        metrics = con.execute("SELECT run_id, step, epoch, name, value FROM metrics "
                              "ORDER BY rowid").fetchall()
        return runs, metrics
    finally:
        con.close()


def _wait_until_mid_epoch(proc, root: Path, timeout: float = 180) -> tuple[str, list[tuple]]:
    """Poll the store until a checkpoint exists and the metrics flushed since then put the run well
    inside its next epoch (so the kill lands mid-epoch, with flushed rows after the checkpoint)."""
    db, end = root / "runs.sqlite", time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
        try:
            runs, metrics = _rows(db) if db.exists() else ([], [])
        except sqlite3.OperationalError:         # schema not created yet
            runs, metrics = [], []
        ck = root / "checkpoints" / f"{runs[0][0]}.pt" if runs else None
        if ck is not None and ck.exists():
            saved = safe_load(ck)
            epoch, spe = int(saved["epoch"]), int(saved["step"]) // int(saved["epoch"])
            last = max(m[1] for m in metrics if m[3] == "loss/total")
            if epoch < EPOCHS - 1 and last // spe == epoch and 10 <= last % spe <= spe - 30:
                return runs[0][0], metrics
        time.sleep(0.01)
    raise AssertionError("the training process never reached the middle of an epoch in time")


def test_sigkill_mid_run_then_resume_from_checkpoint(tmp_path, monkeypatch, capsys):
    cfg_file = tmp_path / "long.yaml"
    cfg_file.write_text(yaml.safe_dump(CONFIG))
    proc = subprocess.Popen([sys.executable, "-m", "kdengine", "train", "--config", str(cfg_file)],
                            cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        rid, seen = _wait_until_mid_epoch(proc, tmp_path)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)           # reap it, so its pid is really gone
    assert proc.returncode == -signal.SIGKILL

    # The store opens and knows the run was cut short.
    store = Store(tmp_path)
    row = store.get_run(rid)
    assert row["status"] == "interrupted", row["status"]
    assert "resume" in row["error"]
    # Nothing flushed before the kill is lost.
    _, after_kill = _rows(tmp_path / "runs.sqlite")
    assert set(seen) <= set(after_kill)
    ck = safe_load(store.checkpoint_path(rid))
    ck_epoch, ck_step = int(ck["epoch"]), int(ck["step"])
    assert 1 <= ck_epoch < EPOCHS
    kept = {m for m in after_kill if m[1] <= ck_step}
    assert any(m[1] > ck_step for m in after_kill)       # rows flushed after the checkpoint exist

    # Resume with the CLI (in this process: a second interpreter would only re-import torch): the
    # same run id continues from the checkpoint to the end.
    monkeypatch.setenv("KD_RUNS_DIR", str(tmp_path))
    assert cli.main(["resume", rid[:12]]) == 0
    assert f"run {rid} done" in capsys.readouterr().out
    store = Store(tmp_path)
    row = store.get_run(rid)
    assert row["status"] == "done" and row["error"] is None
    assert row["summary"].get("final_test_acc", 0) > 0.5
    _, final = _rows(tmp_path / "runs.sqlite")
    assert kept <= set(final)                    # metrics up to the checkpoint are the originals
    series = store.series(rid)
    epochs = [e for _, e, _ in series["test_acc"]]
    assert epochs == [float(e) for e in range(1, EPOCHS + 1)]      # each epoch once, none missing
    steps = [s for s, _, _ in series["loss/total"]]
    assert steps == sorted(set(steps))                              # no step logged twice
    assert any(s > ck_step for s in steps) and steps[-1] == int(safe_load(
        store.checkpoint_path(rid))["step"])
    first_new = min(s for s in steps if s > ck_step)
    assert first_new - ck_step <= CONFIG["train"]["log_every"]       # continues right after it
