"""Progress bars: drawn with an ETA on a terminal (or when forced), absent from pipes and files."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from kdengine.core import progress

ROOT = Path(__file__).resolve().parent.parent


def test_bars_are_off_for_files_and_forced_by_the_environment(monkeypatch):
    monkeypatch.delenv("KD_PROGRESS", raising=False)
    quiet = io.StringIO()
    assert not progress.enabled(quiet)
    with progress.bar(10, "steps", stream=quiet) as b:
        b.update(10)
    assert quiet.getvalue() == ""
    monkeypatch.setenv("KD_PROGRESS", "1")
    loud = io.StringIO()
    with progress.bar(10, "steps", stream=loud) as b:
        progress.set_fraction(b, 0.5)
        progress.set_fraction(b, 0.4)         # never backwards
        assert b.n == 5
        progress.set_fraction(b, 1.0)
    out = loud.getvalue()
    assert "steps 100%|" in out and "10/10" in out and "<" in out     # elapsed<remaining (ETA)
    monkeypatch.setenv("KD_PROGRESS", "0")
    assert not progress.enabled(loud)


def test_track_yields_every_item():
    assert list(progress.track(range(4), "x")) == [0, 1, 2, 3]
    assert list(progress.track(iter("ab"), "y")) == ["a", "b"]


def _train(runs_dir, force: str | None):
    env = {**os.environ, "KD_RUNS_DIR": str(runs_dir)}
    env.pop("KD_PROGRESS", None)
    if force is not None:
        env["KD_PROGRESS"] = force
    p = subprocess.run([sys.executable, "-m", "kdengine", "train", "--config", "digits-quick",
                        "--set", "train.epochs=2", "--set", "teacher.epochs=2"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_cli_train_draws_phase_bars_only_when_asked_off_a_terminal(runs_dir):
    piped = _train(runs_dir, None)                 # stdout is a pipe: no bar, plain lines
    assert "%|" not in piped and "\r" not in piped and "epoch     2" in piped
    forced = _train(runs_dir, "1")
    assert " student 100%|" in forced and "<" in forced and "epoch     2" in forced


def test_without_tqdm_the_work_runs_unbarred(monkeypatch, capsys):
    # a lent GPU machine has torch and not tqdm: the benches and the CLI still run there
    import builtins
    from kdengine.core import progress
    real_import = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ImportError("no tqdm here")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    monkeypatch.setenv("KD_PROGRESS", "1")
    assert list(progress.track(range(3), "steps")) == [0, 1, 2]
    with progress.bar(10, "fraction") as b:
        progress.set_fraction(b, 0.5)
        assert b.n == 5
    progress.say("a line")
    assert capsys.readouterr().out == "a line\n"
