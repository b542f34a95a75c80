"""A class on one server: who is who (display names, recovery codes), and the instructor's view.

**Roster.** Each browser session has an owner id (``?sid=``). A student types a display name once;
the roster (``classroom.json`` in the data folder) maps the id to that name and to a short code.
Typing the code in a new tab gives back the same owner id, so the student's runs are found again.

**Instructor view.** ``student_rows`` groups runs by student (latest run and accuracy each);
``fold_children`` folds sweep and TA-gap child runs under their parent; ``legend_labels`` names
only the knobs that differ between the runs shown (not "name=digits, noise=0.2" on every curve).
Runs are :class:`~kdengine.run.snapshot.RunSnapshot`s, the light ones of ``Engine.runs()`` or
``Engine.list_runs()``.

**Instructor token.** Set once: ``KD_INSTRUCTOR_TOKEN``, else the one kept in the data folder
(``instructor_token``, readable by the server's user only), made and printed at the first start and
kept across restarts.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from kdengine.core.config import flatten
from kdengine.core.knobs import ConfigError
from kdengine.core.paths import data_root

if TYPE_CHECKING:
    from kdengine.run.snapshot import RunSnapshot

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"     # no 0/O, 1/I: read aloud, typed by hand
CODE_LENGTH = 6
NAME_MAX = 40
_lock = threading.Lock()


# ---- the roster ---------------------------------------------------------------------------------
def clean_name(name: str) -> str:
    """A display name as shown: printable, single-spaced, at most ``NAME_MAX`` characters."""
    text = " ".join("".join(c for c in str(name) if c.isprintable()).split())
    return text[:NAME_MAX]


class Roster:
    """Owner id -> {"name", "code"}, kept in one JSON file, written atomically."""

    def __init__(self, root: Path | str):
        self.path = Path(root) / "classroom.json"

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def register(self, owner: str, name: str) -> str:
        """Give ``owner`` a display name; returns its recovery code (kept if it had one)."""
        name = clean_name(name)
        if not name:
            raise ValueError("a display name needs at least one visible character")
        with _lock:
            data = self._read()
            entry = data.get(owner, {})
            code = entry.get("code")
            if not code:
                used = {e.get("code") for e in data.values()}
                code = _new_code(used)
            data[owner] = {"name": name, "code": code}
            self._write(data)
            return code

    def name_of(self, owner: str) -> str | None:
        return self._read().get(owner, {}).get("name")

    def code_of(self, owner: str) -> str | None:
        return self._read().get(owner, {}).get("code")

    def owner_for_code(self, code: str) -> str | None:
        """The owner id a recovery code belongs to (case and spaces ignored), or None."""
        code = "".join(str(code).split()).upper()
        for owner, entry in self._read().items():
            if entry.get("code") == code:
                return owner
        return None

    def names(self) -> dict[str, str]:
        return {o: e["name"] for o, e in self._read().items() if e.get("name")}


def _new_code(used: set) -> str:
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        if code not in used:
            return code


def student_label(owner: str, names: dict[str, str]) -> str:
    """What the instructor sees for an owner: the display name, else a short id."""
    if owner in names:
        return names[owner]
    return f"session {owner[:6]}" if owner else "command line"


# ---- the instructor's view ------------------------------------------------------------------------
def _acc(run: RunSnapshot) -> float | None:
    return run.latest.get("test_acc", run.summary.get("final_test_acc"))


@dataclass
class Group:
    """A top-level run, or a sweep / experiment with its child runs folded under it."""
    key: str                       # the run id, or the parent (sweep / experiment) id
    runs: list[RunSnapshot] = field(default_factory=list)
    is_parent: bool = False

    @property
    def head(self) -> RunSnapshot:
        """The run that stands for the group: the best finished child, else the newest."""
        scored = [r for r in self.runs if _acc(r) is not None]
        if self.is_parent and scored:
            return max(scored, key=_acc)
        return max(self.runs, key=lambda r: r.created)

    @property
    def created(self) -> float:
        return max(r.created for r in self.runs)


def fold_children(runs: Iterable[RunSnapshot]) -> list[Group]:
    """Runs with a ``parent`` (sweep or TA-gap children) are folded into one group per parent;
    other runs are groups of one. Newest group first."""
    groups: dict[str, Group] = {}
    for r in runs:
        parent = r.parent
        key = parent or r.run_id
        g = groups.setdefault(key, Group(key, is_parent=bool(parent)))
        g.runs.append(r)
    return sorted(groups.values(), key=lambda g: -g.created)


@dataclass
class StudentRow:
    owner: str
    student: str
    runs: int                      # top-level runs and sweeps (children folded)
    active: int
    latest: RunSnapshot            # the newest run
    latest_acc: float | None
    best_acc: float | None


def student_rows(runs: Iterable[RunSnapshot], names: dict[str, str]) -> list[StudentRow]:
    """One row per student: how many runs (children folded), the latest run and its accuracy."""
    by_owner: dict[str, list[RunSnapshot]] = {}
    for r in runs:
        by_owner.setdefault(r.owner or "", []).append(r)
    rows = []
    for owner, mine in by_owner.items():
        latest = max(mine, key=lambda r: r.created)
        accs = [a for a in (_acc(r) for r in mine) if a is not None]
        rows.append(StudentRow(owner, student_label(owner, names), len(fold_children(mine)),
                               sum(r.active for r in mine), latest, _acc(latest),
                               max(accs) if accs else None))
    return sorted(rows, key=lambda s: s.student.lower())


def varying_knobs(configs: list[dict]) -> list[str]:
    """Config fields whose value is not the same in every run (what the students changed)."""
    flats = [flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1 and k != "name"]


def short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that is unique among ``keys`` (T, teacher.epochs)."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(1 for o in keys if o == tail or o.endswith("." + tail)) == 1:
                out[k] = tail
                break
        else:
            out[k] = k
    return out


def legend_labels(runs: list[RunSnapshot], max_knobs: int = 3) -> dict[str, str]:
    """run id -> the knobs that differ between these runs, as ``T=4, epochs=10`` (empty when the
    runs are all alike)."""
    knobs = varying_knobs([r.config for r in runs])[:max_knobs]
    short = short_names(knobs)
    out = {}
    for r in runs:
        flat = flatten(r.config)
        out[r.run_id] = ", ".join(f"{short[k]}={_fmt(flat.get(k))}" for k in knobs)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# ---- the instructor token -------------------------------------------------------------------------
TOKEN_ENV = "KD_INSTRUCTOR_TOKEN"
TOKEN_FILE = "instructor_token"
# What a token chosen by hand may hold: it travels in a URL (?tok=), so URL-safe characters only.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~-]{8,128}$")


def check_token(token: str, field_path: str = "token") -> str:
    token = str(token).strip()
    if not _TOKEN_RE.match(token):
        raise ConfigError(field_path, "an instructor token is 8 to 128 letters, digits or . _ ~ - "
                                      "(it travels in a link)")
    return token


def token_path(root: Path | str | None = None) -> Path:
    """Where the server's token is kept: ``instructor_token`` in the data folder."""
    return Path(root or data_root()) / TOKEN_FILE


def stored_token(root: Path | str | None = None) -> str | None:
    """The token kept in the data folder, or None. A file others may read is made private first
    (a copied data folder can arrive with loose permissions)."""
    path = token_path(root)
    try:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None


def _write_private(path: Path, token: str) -> Path:
    """``token`` in a new file next to ``path`` that only this user can read; returns that file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return tmp


def save_token(token: str, root: Path | str | None = None) -> None:
    """Keep ``token`` as the server's token from now on (replacing the one kept before)."""
    path = token_path(root)
    os.replace(_write_private(path, check_token(token)), path)


def ensure_token(root: Path | str | None = None) -> tuple[str, bool]:
    """The kept token, made at the first start: (token, True when it was made just now). Two
    processes starting at once agree: the file appears whole (a hard link, which fails when it
    exists), and the one that loses reads the winner's."""
    token = stored_token(root)
    if token:
        return token, False
    path = token_path(root)
    tmp = _write_private(path, secrets.token_urlsafe(12))
    try:
        os.link(tmp, path)
    except FileExistsError:
        token = stored_token(root)
        if token:
            return token, False
        os.replace(tmp, path)        # an empty or unreadable file: replaced
    except OSError:    # a disk without hard links (some shared folders): a plain rename instead
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return stored_token(root) or "", True


def instructor_token(announce=print) -> str:
    """The token that opens the Instructor page, the Data page and the link builder:
    ``KD_INSTRUCTOR_TOKEN`` when set, else the one kept in the data folder, made and announced
    (on the server's console, which students do not see) at the first start only."""
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env
    with _lock:
        token, new = ensure_token()
    if new:
        announce(f"KD Playground instructor token: {token}  (kept in {token_path()}; open the "
                 f"Instructor page with ?tok={token}. It is not printed again: "
                 f"python -m kdengine serve --dry-run --show-token shows it.)")
    return token


def token_matches(given: str | None) -> bool:
    return bool(given) and secrets.compare_digest(str(given).strip(), instructor_token())
