"""The CLI drives the same engine: train a preset, list, show, export, presets, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args, runs_dir, check=True):
    env = {**os.environ, "KD_RUNS_DIR": str(runs_dir)}
    p = subprocess.run([sys.executable, "-m", "kdengine", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_train_list_show_export(runs_dir, tmp_path):
    p = run_cli(["train", "--config", "digits-50-labels", "--set", "train.epochs=2",
                 "--set", "teacher.epochs=3"], runs_dir)
    assert "student alone" in p.stdout and "test acc" in p.stdout
    rid = p.stdout.split()[1].rstrip(":")
    lst = run_cli(["list"], runs_dir).stdout
    assert rid in lst and "done" in lst
    shown = json.loads(run_cli(["show", rid[:12]], runs_dir).stdout)
    assert shown["config"]["method"]["name"] == "hinton" and shown["status"] == "done"
    csv_text = run_cli(["export", rid, "--format", "csv"], runs_dir).stdout
    assert csv_text.splitlines()[0] == "run_id,step,epoch,name,value" and "test_acc" in csv_text
    out = tmp_path / "r.json"
    run_cli(["export", rid, "--format", "json", "-o", str(out)], runs_dir)
    data = json.loads(out.read_text())
    assert data["run"]["id"] == rid and any(m["name"] == "loss/kd" for m in data["metrics"])


def test_bad_value_is_one_clear_line(runs_dir):
    p = run_cli(["train", "--config", "digits-quick", "--set", "method.params.T=-1"], runs_dir,
                check=False)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: method.params.T: T must be > 0.0, got -1.0"


def test_missing_dataset_offline_is_one_clear_line(runs_dir):
    p = run_cli(["train", "--config", "digits-quick", "--set", "data.name=cifar10",
                 "--set", "data.download=false", "--set", "student.arch=mlp"], runs_dir, check=False)
    assert p.returncode == 1 and "CIFAR10 is not in" in p.stderr and "Traceback" not in p.stderr


def test_presets_and_methods_listed(runs_dir):
    out = run_cli(["presets"], runs_dir).stdout
    for name in ("digits-50-labels", "moons-2d", "digits-dkd"):
        assert name in out
    out = run_cli(["methods"], runs_dir).stdout
    for name in ("ce", "hinton", "logit_mse", "dkd"):
        assert name in out


def test_sweep_command_runs_a_grid(runs_dir):
    p = run_cli(["sweep", "--config", "digits-quick", "--axis", "method.params.T=1,4",
                 "--set", "train.epochs=1", "--set", "teacher.epochs=2", "--backend", "vectorised"],
                runs_dir)
    assert "2 cells" in p.stdout
    assert p.stdout.count("done") == 2 and "T=1" in p.stdout and "T=4" in p.stdout
    assert len(run_cli(["list"], runs_dir).stdout.strip().splitlines()) == 3   # header + 2 runs
    # Ray is the engine's executor now (KD_RAY_ADDRESS), not a sweep backend
    ray = run_cli(["sweep", "--config", "digits-quick", "--axis", "method.params.T=1,4",
                   "--backend", "ray"], runs_dir, check=False)
    assert ray.returncode == 2 and "invalid choice: 'ray'" in ray.stderr
