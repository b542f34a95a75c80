"""A server students can reach: what ``python -m kdengine serve`` resolves, starts and prints.

The serve command binds Streamlit to ``--address`` and ``--port``, and builds every link (the ones
it prints, and the app's own through ``KD_PUBLIC_URL``) under the public URL students open, e.g.
``https://kd.example.org/workshop`` behind a reverse proxy. The public URL's path becomes
Streamlit's ``server.baseUrlPath``, so the proxy forwards the path as it is (docs/serving.md).
The workers (processes and slots, threads, or a Ray address) reach the engine through the
environment variables of :mod:`kdengine.run.serving`.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from kdengine.core.knobs import ConfigError
from kdengine.run import serving
from kdengine.teaching.classroom import (TOKEN_ENV, check_token, ensure_token, save_token,
                                         stored_token, token_path)

PUBLIC_URL_ENV = "KD_PUBLIC_URL"
DEFAULT_PORT = 8501
_SEGMENT = re.compile(r"^[A-Za-z0-9._~-]+$")
_LOCAL = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "")


def check_public_url(url: str, field_path: str = "public_url") -> str:
    """``url`` without a trailing slash, or ConfigError: http(s), a host, a plain path (no query,
    no fragment, no user name), because every link of the app is built under it."""
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        _ = parts.port                              # a port out of range raises here
    except ValueError:
        parts = None
    segments = [s for s in parts.path.split("/") if s] if parts else []
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.query or parts.fragment or parts.username or "@" in parts.netloc
            or any(not _SEGMENT.match(s) or s in (".", "..") for s in segments)):
        raise ConfigError(field_path, f"must be an http(s) address with a plain path, e.g. "
                                      f"https://kd.example.org/workshop, got {text!r}")
    return f"{parts.scheme}://{parts.netloc}" + "".join(f"/{s}" for s in segments)


def public_url() -> str | None:
    """The public URL this server was started with (``KD_PUBLIC_URL``), or None."""
    text = os.environ.get(PUBLIC_URL_ENV, "").strip()
    return check_public_url(text, PUBLIC_URL_ENV) if text else None


def base_url_path(url: str | None) -> str:
    """Streamlit's ``server.baseUrlPath`` for a public URL: its path without slashes."""
    return urlsplit(url).path.strip("/") if url else ""


def page_url(base: str, page: str = "", query: str = "") -> str:
    """A page of the app under ``base`` (the default page for ``page=""``), with a query string."""
    return f"{base.rstrip('/')}/{page}" + (f"?{query}" if query else "")


@dataclass
class ServeSettings:
    address: str = "localhost"
    port: int = DEFAULT_PORT
    public_url: str | None = None
    workers: int | None = None         # worker processes (default: one per core)
    slots: int | None = None           # runs each worker (process or Ray actor) time-slices
    threads: bool = False              # one process, runs on threads
    ray_address: str | None = None

    def __post_init__(self):
        if not self.address or any(c.isspace() for c in self.address) or "/" in self.address:
            raise ConfigError("--address", f"must be a host name or IP address, got {self.address!r}")
        if not 1 <= int(self.port) <= 65535:
            raise ConfigError("--port", f"must be between 1 and 65535, got {self.port}")
        for name in ("workers", "slots"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name}", f"must be at least 1, got {value}")
        if sum([self.threads, bool(self.ray_address), self.workers is not None]) > 1 or \
                (self.threads and self.slots is not None):
            raise ConfigError("--workers", "choose one: worker processes (--workers, --slots), "
                                           "--threads or --ray (with --slots)")
        if self.public_url:
            self.public_url = check_public_url(self.public_url, "--public-url")

    @property
    def base_path(self) -> str:
        return base_url_path(self.public_url)

    @property
    def link_base(self) -> str:
        """Where students open the app: the public URL, else this machine's address and port."""
        if self.public_url:
            return self.public_url
        host = "localhost" if self.address in _LOCAL else self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def links(self, token: str | None) -> dict[str, str]:
        """The student link, and the instructor link (with ``?tok=`` when ``token`` is given)."""
        return {"student": page_url(self.link_base),
                "instructor": page_url(self.link_base, "instructor",
                                       f"tok={token}" if token else "")}

    def health_url(self) -> str:
        """The health check of the server these settings start, from this machine."""
        host = "127.0.0.1" if self.address in _LOCAL else self.address
        host = f"[{host}]" if ":" in host else host
        path = f"/{self.base_path}" if self.base_path else ""
        return f"http://{host}:{self.port}{path}/_stcore/health"

    def env(self, root: Path) -> dict[str, str]:
        """The environment the app starts with: the data folder (absolute: the server runs from
        the repository), the public URL, and the workers the flags chose (without flags, the
        ``KD_*`` variables already set apply)."""
        out = {"KD_RUNS_DIR": str(root), PUBLIC_URL_ENV: self.public_url or ""}
        if self.ray_address:
            out["KD_RAY_ADDRESS"] = self.ray_address
            if self.slots:
                out["KD_SLOTS"] = str(self.slots)
        elif self.threads:
            out.update(KD_SERVE="threads", KD_RAY_ADDRESS="")
        elif self.workers or self.slots:
            out.update(KD_SERVE="processes", KD_RAY_ADDRESS="")
            if self.workers:
                out["KD_WORKER_PROCESSES"] = str(self.workers)
            if self.slots:
                out["KD_SLOTS"] = str(self.slots)
        return out

    def streamlit_command(self, app: Path) -> list[str]:
        cmd = [sys.executable, "-m", "streamlit", "run", str(app),
               "--server.address", self.address, "--server.port", str(self.port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false"]
        if self.base_path:
            cmd += ["--server.baseUrlPath", self.base_path]
        return cmd


def describe_executor(env: Mapping[str, str]) -> str:
    """Where the runs of a server started with ``env`` train, in words."""
    slots = env.get("KD_SLOTS", "")
    slots = int(slots) if slots.isdigit() and int(slots) > 0 else serving.DEFAULT_SLOTS
    if env.get("KD_RAY_ADDRESS"):
        return f"on Ray at {env['KD_RAY_ADDRESS']}, a worker per CPU, {slots} runs each"
    if env.get("KD_SERVE") == "threads":
        return "on threads in the server process"
    workers = env.get("KD_WORKER_PROCESSES", "")
    workers = int(workers) if workers.isdigit() and int(workers) > 0 else serving.worker_processes()
    return f"in {workers} worker process{'es' if workers > 1 else ''}, {slots} runs each"


def resolve_token(given: str | None, env: dict[str, str], root: Path,
                  keep: bool = True) -> tuple[str | None, str, bool]:
    """The instructor token a server starts with, where it comes from (in words), and whether it was
    made just now: ``given`` (kept from now on), else ``KD_INSTRUCTOR_TOKEN`` in ``env``, else the
    one kept in the data folder, else a new one, kept. With ``keep`` off (a dry run) nothing is
    written, and the token may be None (made at the first start). ``given`` goes into ``env``, so
    it wins over the variable in the server too."""
    if given:
        token = env[TOKEN_ENV] = check_token(given, "--token")
        if keep:
            save_token(token, root)
            return token, f"set now, kept in {token_path(root)}", False
        return token, "given (a start keeps it in the data folder)", False
    if env.get(TOKEN_ENV, "").strip():
        return env[TOKEN_ENV].strip(), f"from {TOKEN_ENV}", False
    if not keep:
        token = stored_token(root)
        return token, f"kept in {token_path(root)}" if token else "made at the first start", False
    token, new = ensure_token(root)
    return token, f"kept in {token_path(root)}", new


def app_file() -> Path:
    """``app.py`` of this checkout (the engine is installed editable, next to the app)."""
    app = Path(__file__).resolve().parents[2] / "app.py"
    if not app.is_file():
        raise ConfigError("serve", f"no app.py next to the kdengine package ({app}); run the "
                                   f"server from a checkout of the repository")
    return app


__all__ = ["DEFAULT_PORT", "PUBLIC_URL_ENV", "ServeSettings", "app_file", "base_url_path",
           "check_public_url", "describe_executor", "page_url", "public_url", "resolve_token"]
