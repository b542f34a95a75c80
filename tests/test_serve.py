"""A server students can reach: ``python -m kdengine serve`` resolves its flags into Streamlit's
settings and the links it prints (under the public URL, its path served as Streamlit's base path),
really starts and answers its health check and a page's WebSocket there; the instructor token is made once, kept private
in the data folder across restarts and not printed again unless asked; the app's lesson links use
the public URL."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from kdengine import cli
from kdengine.teaching import classroom
from kdengine.teaching.class_server import ServeSettings, check_public_url, resolve_token
from kdengine.teaching.lessons import lesson_link

from support import app_test, free_port
from tests.test_e2e_ws import ws_session

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = "https://kd.example.org/workshop"


@pytest.fixture
def clean_env(monkeypatch, runs_dir):
    """No token or public URL from the environment: the data folder's own."""
    monkeypatch.delenv("KD_INSTRUCTOR_TOKEN", raising=False)
    monkeypatch.delenv("KD_PUBLIC_URL", raising=False)
    return runs_dir


def child_env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("KD_INSTRUCTOR_TOKEN", "KD_PUBLIC_URL")}
    return {**env, "KD_RUNS_DIR": str(root), "PYTHONPATH": str(ROOT)}


# ---- settings and printed links ----------------------------------------------------------------------
def test_dry_run_prints_settings_links_and_the_streamlit_command(clean_env, capsys):
    assert cli.main(["serve", "--dry-run", "--public-url", PUBLIC + "/", "--address", "0.0.0.0",
                     "--port", "8600", "--workers", "2", "--slots", "3"]) == 0
    out = capsys.readouterr().out
    assert "listens on       0.0.0.0:8600, path /workshop" in out
    assert "in 2 worker processes, 3 runs each" in out
    assert f"Students open      {PUBLIC}/\n" in out
    assert f"Instructor link    {PUBLIC}/instructor\n" in out          # no token shown
    cmd = out.split("would run: ", 1)[1].split()
    assert cmd[cmd.index("--server.baseUrlPath") + 1] == "workshop"
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--server.port") + 1] == "8600" and cmd[3] == "run"
    assert not (clean_env / "instructor_token").exists()            # a dry run changes nothing


@pytest.mark.parametrize("args, words", [
    (["--public-url", "ftp://kd.example.org"], "--public-url: must be an http(s) address"),
    (["--public-url", "https://kd.example.org/a?b=1"], "--public-url: must be"),
    (["--public-url", "https://kd.example.org/../x"], "--public-url: must be"),
    (["--port", "0"], "--port: must be between 1 and 65535"),
    (["--workers", "0"], "--workers: must be at least 1"),
    (["--threads", "--workers", "2"], "choose one"),
    (["--token", "short"], "--token: an instructor token is 8 to 128"),
])
def test_bad_flags_are_one_line_naming_the_flag(clean_env, capsys, args, words):
    assert cli.main(["serve", "--dry-run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err


def test_links_and_base_path_follow_the_public_url_or_the_address():
    s = ServeSettings(public_url="https://kd.example.org/a/b/")
    assert s.base_path == "a/b" and s.links("T0K3N-123")["instructor"] == \
        "https://kd.example.org/a/b/instructor?tok=T0K3N-123"
    assert s.health_url() == "http://127.0.0.1:8501/a/b/_stcore/health"
    assert ServeSettings(address="0.0.0.0", port=9000).links(None)["student"] == "http://localhost:9000/"
    assert ServeSettings(address="10.1.2.3").links(None)["student"] == "http://10.1.2.3:8501/"
    assert check_public_url("http://host:8080") == "http://host:8080"
    env = ServeSettings(threads=True, public_url=PUBLIC).env(Path("/data"))
    assert env["KD_SERVE"] == "threads" and env["KD_PUBLIC_URL"] == PUBLIC
    assert env["KD_RUNS_DIR"] == "/data"
    assert "KD_SERVE" not in ServeSettings().env(Path("/data"))     # no flag: the variables apply


# ---- the instructor token --------------------------------------------------------------------------
ASK = "from kdengine.teaching.classroom import instructor_token; print('token=' + instructor_token())"


def test_the_token_is_made_once_kept_private_and_survives_a_restart(tmp_path):
    outs = [subprocess.run([sys.executable, "-c", ASK], env=child_env(tmp_path), cwd=ROOT,
                           capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert all(p.returncode == 0 for p in outs), [p.stderr for p in outs]
    tokens = [re.search(r"^token=(\S+)$", p.stdout, re.M).group(1) for p in outs]
    assert tokens[0] == tokens[1] and len(tokens[0]) >= 12          # the same after a restart
    assert tokens[0] in outs[0].stdout.replace(f"token={tokens[0]}", "")   # announced at first...
    assert outs[1].stdout.count(tokens[0]) == 1                      # ...and never again
    path = tmp_path / "instructor_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == tokens[0]
    override = subprocess.run([sys.executable, "-c", ASK],
                              env={**child_env(tmp_path), "KD_INSTRUCTOR_TOKEN": "from-env-123"},
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "token=from-env-123" in override.stdout                  # the variable still overrides
    assert path.read_text().strip() == tokens[0]


def test_a_set_token_replaces_the_kept_one_and_loose_permissions_are_tightened(clean_env):
    token, new = classroom.ensure_token()
    assert new and classroom.token_matches(token)
    classroom.save_token("chosen-by-hand")
    assert classroom.token_matches("chosen-by-hand") and not classroom.token_matches(token)
    path = classroom.token_path()
    os.chmod(path, 0o644)
    assert classroom.stored_token() == "chosen-by-hand"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the serve command's order: --token (kept, and over the variable), the variable, the kept one
    env = {"KD_INSTRUCTOR_TOKEN": "from-the-env"}
    assert resolve_token(None, env, clean_env)[:2] == ("from-the-env", "from KD_INSTRUCTOR_TOKEN")
    assert resolve_token(None, {}, clean_env)[0] == "chosen-by-hand"
    assert resolve_token("given-at-start", env, clean_env)[0] == "given-at-start"
    assert env["KD_INSTRUCTOR_TOKEN"] == "given-at-start"          # what the server sees
    assert classroom.stored_token() == "given-at-start"


# ---- a real start --------------------------------------------------------------------------------------
def test_serve_starts_answers_under_the_public_path_and_prints_the_links(tmp_path, capsys):
    port, log = free_port(), tmp_path / "serve.log"
    root = tmp_path / "data_folder"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kdengine", "serve", "--port", str(port),
                                 "--public-url", PUBLIC, "--threads"], cwd=tmp_path,
                                env=child_env(root), stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 90
        while cli.main(["health", "--port", str(port), "--public-url", PUBLIC,
                        "--timeout", "2"]) != 0:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < end, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        token = classroom.stored_token(root)
        assert token and f"Instructor link    {PUBLIC}/instructor?tok={token}" in text   # first start
        assert f"Students open      {PUBLIC}/" in text and "path /workshop" in text
        with pytest.raises(urllib.error.HTTPError):                 # served under the path only
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5)
        # a page's WebSocket under the path (/workshop/_stcore/stream) draws the Lab
        with ws_session().WsClass(f"http://127.0.0.1:{port}/workshop") as c:
            assert "Train" in c.add("", ready=None, timeout=120).buttons
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    capsys.readouterr()
    os.environ["KD_RUNS_DIR"], old = str(root), os.environ["KD_RUNS_DIR"]
    try:                                                            # the next start keeps it quiet
        assert cli.main(["serve", "--dry-run", "--public-url", PUBLIC]) == 0
        assert token not in capsys.readouterr().out
        assert cli.main(["serve", "--dry-run", "--show-token", "--public-url", PUBLIC]) == 0
        assert f"{PUBLIC}/instructor?tok={token}" in capsys.readouterr().out
    finally:
        os.environ["KD_RUNS_DIR"] = old


# ---- the app's links ---------------------------------------------------------------------------------
def test_lesson_links_are_built_under_the_public_url(monkeypatch):
    link = lesson_link("why-temperature", {"method.params.T": 4.0}, ["method.params.T"], base=PUBLIC)
    assert link == f"{PUBLIC}/lessons?lesson=why-temperature&lock=method.params.T&method.params.T=4.0"
    monkeypatch.setenv("KD_INSTRUCTOR_TOKEN", "instructor-token")
    monkeypatch.setenv("KD_PUBLIC_URL", PUBLIC)
    at = app_test("app_pages/lessons.py", query={"lesson": "why-temperature",
                                                 "tok": "instructor-token"})
    assert at.code and at.code[0].value.startswith(f"{PUBLIC}/lessons?lesson=why-temperature")
    at = app_test("app_pages/instructor.py", query={"tok": "instructor-token"})
    assert any(f"{PUBLIC}/" in c.value for c in at.caption)


# ---- the container recipe ------------------------------------------------------------------------------
def dockerfile() -> dict[str, list[str]]:
    """Instruction -> its arguments, for each instruction of the Dockerfile (continuations joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(" ".join(rest.split()))
    return out


def test_the_container_runs_the_serve_command_with_the_documented_flags(clean_env, capsys):
    d = dockerfile()
    assert d["FROM"] == ["python:3.11-slim"] and d["EXPOSE"] == ["8501"] and d["VOLUME"] == ["/data"]
    assert any("pip install" in r and "-r requirements.txt" in r for r in d["RUN"])
    assert any("KD_RUNS_DIR=/data" in e for e in d["ENV"])
    cmd = json.loads(d["CMD"][0])
    assert cmd[:4] == ["python", "-m", "kdengine", "serve"]
    health = json.loads(d["HEALTHCHECK"][0].split("CMD ", 1)[1])
    assert health[:4] == ["python", "-m", "kdengine", "health"]
    app = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["app"]
    assert app["command"] == cmd and app["environment"]["KD_RUNS_DIR"] == "/data"
    assert any(v.endswith(":/data") for v in app["volumes"])
    assert any(p.endswith(":8501") for p in app["ports"])
    # the flags are this command line's: it resolves them as it would in the container
    assert cli.main([*cmd[3:], "--dry-run"]) == 0
    assert "listens on       0.0.0.0:8501" in capsys.readouterr().out
    assert cli.build_parser().parse_args(health[3:]).port == 8501
