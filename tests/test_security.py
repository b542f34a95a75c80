"""Local by default, no code in checkpoints, no config value reaching eval, a shell
or a path outside the data folder."""
from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from kdengine import ConfigError, Engine, RunConfig, Store, cli
from kdengine.data.datasets import load_data
from kdengine.methods import get_method_class, method_names
from kdengine.core.knobs import _base_type, field_specs
from kdengine.core.paths import inside_root
from kdengine.core.checkpoints import CheckpointError, safe_load
from kdengine.teachers.sources import get_teacher

ROOT = Path(__file__).resolve().parent.parent


# ---- the server is local by default ------------------------------------------------------------
def test_streamlit_binds_to_localhost_and_sends_no_statistics():
    conf = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "localhost"
    assert conf["browser"]["gatherUsageStats"] is False
    # Streamlit's own protections stay on (their defaults are true).
    assert conf["server"].get("enableXsrfProtection", True) is True
    assert conf["server"].get("enableCORS", True) is True


# ---- checkpoints carry tensors, never code -------------------------------------------------------
class Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, marker: Path, how: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": {"w": torch.zeros(2)}, "meta": Evil(marker), "epoch": 1, "step": 1}
    if how == "torch":
        torch.save(payload, path)                       # zip container, like a real checkpoint
    else:
        path.write_bytes(pickle.dumps(payload))         # a bare pickle (legacy format)
    return path


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    path = _plant(tmp_path / "evil.pt", marker, how)
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        safe_load(path)
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_on_every_loading_path(runs_dir):
    marker = runs_dir / "pwned"
    cfg = RunConfig.from_dict({
        "data": {"name": "digits"}, "student": {"arch": "mlp", "depth": 1, "width": 8},
        "teacher": {"model": {"arch": "mlp", "depth": 1, "width": 16}, "epochs": 1},
        "train": {"epochs": 1}})
    data = load_data(cfg.data)
    cpu = torch.device("cpu")
    # 1. a teacher checkpoint named in the config
    _plant(runs_dir / "evil.pt", marker, "torch")
    ck_cfg = cfg.with_overrides({"teacher.source": "checkpoint", "teacher.checkpoint": "evil.pt"})
    with pytest.raises(CheckpointError):
        get_teacher(ck_cfg, data, cpu)
    # 2. a planted entry in the teacher cache: discarded and retrained, never unpickled as code
    from kdengine.teachers.keys import teacher_key
    _plant(runs_dir / "teachers" / f"{teacher_key(cfg)}.pt", marker, "torch")
    _, info = get_teacher(cfg, data, cpu)
    assert info["cached"] is False
    # 3. a planted run checkpoint, then "resume"
    store = Store(runs_dir)
    rid = store.create_run(cfg.to_dict(), cfg.hash, owner="a")
    store.set_status(rid, "interrupted")
    _plant(store.checkpoint_path(rid), marker, "torch")
    eng = Engine(store=store, max_workers=1)
    try:
        with pytest.raises(CheckpointError):
            eng.resume_run(rid)
    finally:
        eng.shutdown()
    assert not marker.exists()


# ---- no config value reaches eval, exec or a shell ---------------------------------------------
MARK = "KDPWN7c1e"


def _free_text_fields(cls, prefix=""):
    """Dotted paths of the str knobs without fixed choices (the ones a user can type anything in)."""
    out = []
    for spec in field_specs(cls):
        tp = _base_type(spec["type"])[0]
        if dataclasses.is_dataclass(tp):
            out += _free_text_fields(tp, f"{prefix}{spec['name']}.")
        elif tp is str and not spec["choices"]:
            out.append(f"{prefix}{spec['name']}")
    return out


@pytest.fixture
def audit():
    """Record every eval/exec/compile source and every process launch that mentions MARK."""
    seen: list[tuple] = []
    state = {"on": True}

    def hook(event, args):
        if not state["on"]:
            return
        if event in ("compile", "exec", "os.system", "subprocess.Popen", "os.posix_spawn",
                     "os.exec", "os.spawn", "os.startfile", "pty.spawn"):
            try:
                text = " ".join(a.decode(errors="replace") if isinstance(a, bytes) else str(a)
                                for a in args[:3])
            except Exception:
                text = ""
            if MARK in text:
                seen.append((event, text[:200]))
    sys.addaudithook(hook)      # hooks cannot be removed; the fixture switches it off instead
    yield seen
    state["on"] = False


def test_hostile_text_in_every_free_field_reaches_no_eval_or_shell(runs_dir, audit, capsys,
                                                                  monkeypatch):
    monkeypatch.chdir(runs_dir)                   # a command that did run would drop its marker here
    marker = runs_dir / "pwned"
    payload = (f"{MARK} $(touch pwned) `touch pwned`; touch pwned #"
               f"__import__('os').system('touch pwned') {{{{7*7}}}} %(x)s")
    rel_payload = payload.replace("/", "_")            # the path fields must stay relative
    fields = _free_text_fields(RunConfig)
    assert {"name", "data.data_dir", "teacher.checkpoint", "method.name"} <= set(fields)
    over = {f: (rel_payload if f in ("data.data_dir", "teacher.checkpoint") else payload)
            for f in fields if f != "method.name"}
    cfg = RunConfig.from_dict({
        "data": {"name": "digits"}, "student": {"arch": "mlp", "depth": 1, "width": 8},
        "teacher": {"model": {"arch": "mlp", "depth": 1, "width": 16}, "epochs": 1},
        "train": {"epochs": 1, "log_every": 10}}).with_overrides(over)
    eng = Engine(store=Store(runs_dir), max_workers=1)
    try:
        rid = eng.submit(cfg, owner=payload, name=payload)
        assert eng.wait(rid, timeout=60) == "done"
        # the same text as a teacher checkpoint path: refused as missing, nothing run
        bad = eng.submit(cfg.with_overrides({"teacher.source": "checkpoint"}), owner="a")
        assert eng.wait(bad, timeout=60) == "failed"
        assert "does not exist" in eng.snapshot(bad).error
    finally:
        eng.shutdown()
    for args in (["show", rid], ["export", rid, "--format", "csv"], ["list"]):
        assert cli.main(args) == 0
    # method names and free-text method knobs: refused or kept as plain text
    for name in method_names():
        for f in _free_text_fields(get_method_class(name).Params, "method.params."):
            try:
                RunConfig.from_dict({"method": {"name": name, "params": {f.rsplit(".", 1)[1]: payload}}})
            except ConfigError:
                pass
    with pytest.raises(ConfigError) as ei:
        RunConfig.from_dict({"method": {"name": payload}})
    assert ei.value.field == "method.name"
    assert audit == [], audit
    assert not marker.exists()
    capsys.readouterr()


# ---- paths stay inside the data folder ---------------------------------------------------------
TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "data/../../../etc/passwd", "..", "a/../../b",
              "ok\x00/../../etc/passwd", "~/.ssh/id_rsa", "..\\..\\windows", "C:/Windows",
              "\\\\server\\share", "x" * 300, "a/" * 600]


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_path_traversal_is_refused_in_config_and_at_open(runs_dir, bad):
    with pytest.raises(ConfigError) as ei:
        RunConfig.from_dict({"data": {"data_dir": bad}})
    assert ei.value.field == "data.data_dir"
    with pytest.raises(ConfigError) as ei:
        RunConfig.from_dict({"teacher": {"source": "checkpoint", "checkpoint": bad}})
    assert ei.value.field == "teacher.checkpoint"
    with pytest.raises(ConfigError):
        inside_root(bad, "teacher.checkpoint", runs_dir)


def test_symlink_out_of_the_data_folder_is_refused_when_opened(runs_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.pt").write_bytes(b"secret")
    (runs_dir / "link").symlink_to(outside, target_is_directory=True)
    # Lexically fine, so the config is valid; resolving the link shows it leaves the folder.
    cfg = RunConfig.from_dict({"teacher": {"source": "checkpoint", "checkpoint": "link/secret.pt"}})
    with pytest.raises(ConfigError, match="leaves the data folder") as ei:
        get_teacher(cfg, load_data(cfg.data), torch.device("cpu"))
    assert ei.value.field == "teacher.checkpoint"
    assert inside_root("sub/file.pt", "x", runs_dir) == runs_dir.resolve() / "sub" / "file.pt"


def test_overlong_checkpoint_path_is_a_checkpoint_error(runs_dir):
    with pytest.raises(CheckpointError, match="cannot be used"):
        safe_load(runs_dir / ("x" * 300))


def test_a_config_that_skipped_validation_is_still_contained(runs_dir):
    """Defence in depth: even a config mutated after validation cannot open a file outside."""
    cfg = RunConfig.from_dict({"teacher": {"source": "checkpoint", "checkpoint": "x.pt"}})
    cfg.teacher.checkpoint = "../../../../etc/passwd"
    with pytest.raises(ConfigError):
        get_teacher(cfg, load_data(cfg.data), torch.device("cpu"))
