"""bench/gpu.py and bench/gpu_check.py: one line and exit 0 without a GPU; the same code runs on the
CPU (a few steps; the checks that apply there)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _bench(args, runs_dir, script="bench/gpu.py"):
    env = {**os.environ, "KD_RUNS_DIR": str(runs_dir)}
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("script", ["bench/gpu.py", "bench/gpu_check.py"])
def test_without_cuda_it_says_so_in_one_line_and_exits_0(runs_dir, script):
    p = _bench([], runs_dir, script)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.strip().splitlines()) == 1 and "no CUDA device" in p.stdout


def test_cpu_mode_prints_engine_and_bare_loop_rows_for_amp_on_and_off(runs_dir):
    p = _bench(["--device", "cpu", "--steps", "4", "--batch", "16", "--log-every", "1",
                "--repeats", "1", "--teacher", "mlp:1:16", "--student", "mlp:1:8"], runs_dir)
    assert p.returncode == 0, p.stderr
    rows = [r for r in p.stdout.splitlines() if re.match(r"\| (on|off) \|", r)]
    assert [r.split("|")[1].strip() for r in rows] == ["on", "off"]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[2:-1]]
        engine, bare, ratio = float(cells[0]), float(cells[1]), float(cells[2])
        assert engine > 0 and bare > 0 and ratio == pytest.approx(engine / bare, rel=0.01)
    assert "cifar100_synthetic (synthetic: timing only)" in p.stdout


def test_gpu_check_runs_what_applies_on_the_cpu(runs_dir):
    # the checks a lent GPU machine runs (no pytest there), exercised here on the CPU
    p = _bench(["--device", "cpu"], runs_dir, "bench/gpu_check.py")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()[1:]
    assert [ln.split(":")[0] for ln in lines] == ["ok    no host sync per step", "ok    engine run"]
    assert "skipped (CUDA only)" in lines[0]
