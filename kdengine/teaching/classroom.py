"""A class on one server: who is who (display names, recovery codes), and the instructor's view.

**Roster.** Each browser session has an owner id (``?sid=``). A student types a display name once;
the roster (``classroom.json`` in the data folder) maps the id to that name and to a short code.
Typing the code in a new tab gives back the same owner id, so the student's runs are found again.
A name is one student's in the class (case and spaces ignored): typing a taken name raises
:class:`NameTaken`, and the page asks for that student's code instead. The instructor renames a
student or merges two identities of one (:func:`merge_students`: the runs move to the one kept, and
a browser still on the other is sent to it). Students who never typed a name are "unnamed 1", ...

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

import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from kdengine.core.config import flatten
from kdengine.core.knobs import ConfigError
from kdengine.core.json_files import read_dict, write_dict
from kdengine.core.paths import data_root
from kdengine.core.roles import Caller, NotAllowed, check_instructor

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


def name_key(name: str) -> str:
    """What makes two names the same student's: case and spaces ignored ("Ana", " ana ", "A na")."""
    return "".join(clean_name(name).casefold().split())


class NameTaken(ValueError):
    """Another identity of the class has this name."""

    def __init__(self, name: str):
        super().__init__(f"{name!r} is already a student's name in this class. If that is you, "
                         f"type your code from your first tab; if not, choose another name "
                         f"(add a letter, e.g. \"{name} B\").")
        self.name = name


class Roster:
    """Owner id -> {"name", "code"}, kept in one JSON file, written atomically."""

    def __init__(self, root: Path | str):
        self.path = Path(root) / "classroom.json"

    def _read(self) -> dict[str, dict]:
        return read_dict(self.path)

    def _write(self, data: dict) -> None:
        write_dict(self.path, data)

    def register(self, owner: str, name: str) -> str:
        """Give ``owner`` a display name; returns its recovery code (kept if it had one). Raises
        :class:`NameTaken` when another identity has that name."""
        name = clean_name(name)
        if not name:
            raise ValueError("a display name needs at least one visible character")
        with _lock:
            data = self._read()
            if _holder(data, name) not in (None, owner):
                raise NameTaken(name)
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

    def owner_for_name(self, name: str) -> str | None:
        """The owner id that holds ``name`` (case and spaces ignored), or None."""
        return _holder(self._read(), name)

    def merged_into(self, owner: str) -> str | None:
        """The identity ``owner`` was merged into (a browser still on it goes there), or None."""
        return self._read().get(owner, {}).get("merged_into")

    def rename(self, owner: str, name: str, caller: Caller | None = None) -> None:
        """A new display name for ``owner``: the student's own, or the instructor's choice."""
        if caller is not None and not caller.may_change(owner):
            raise NotAllowed("Only the instructor can rename another student. Nothing was changed.")
        self.register(owner, name)

    def merge(self, old: str, new: str) -> None:
        """``old`` and ``new`` are one student: ``new`` keeps its name and code (or takes the
        other's name when it has none) and ``old`` points to it."""
        with _lock:
            data = self._read()
            gone = data.get(old, {})
            kept = data.setdefault(new, {})
            if not kept.get("name") and gone.get("name"):
                kept["name"] = gone["name"]
            if not kept.get("code"):
                kept["code"] = gone.get("code") or _new_code({e.get("code") for e in data.values()})
            data[old] = {"merged_into": new}
            self._write(data)

    def archive(self, label: str) -> None:
        """A new class: the names so far are kept aside in ``classroom-<label>.json`` and free."""
        with _lock:
            data = self._read()
            if data:
                path = self.path.with_name(f"classroom-{label.replace(' ', '-')}.json")
                write_dict(path, data)
            self._write({})


def _holder(data: dict, name: str) -> str | None:
    key = name_key(name)
    return next((o for o, e in data.items() if e.get("name") and name_key(e["name"]) == key), None)


def merge_students(engine, roster: Roster, old: str, new: str, caller: Caller | None = None) -> int:
    """Two identities of one student become ``new``: its runs and sweeps move over (the store's
    owner column and the engine's runs) and the roster points ``old`` to it. Instructor only;
    returns how many runs moved."""
    check_instructor(caller, "merge two students")
    if old == new:
        raise ValueError("pick two different students to merge")
    moved = engine.move_runs(old, new, caller=caller)
    roster.merge(old, new)
    return moved


def new_class(engine, roster: Roster, caller: Caller | None = None) -> str:
    """Close the class: its runs archived (stored, off the board), its names freed, no lock, no
    answer revealed. Instructor only; returns the closed class's label."""
    label = engine.new_class(caller=caller)
    roster.archive(label)
    return label


def _new_code(used: set) -> str:
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        if code not in used:
            return code


CLI_OWNERS = ("", "cli")          # runs started from the command line or Python


def student_labels(runs: Iterable[RunSnapshot], names: dict[str, str]) -> dict[str, str]:
    """owner -> what the instructor sees: the display name; "unnamed 1", "unnamed 2", ... for those
    who never typed one (numbered by their first run); "command line" for the CLI's runs."""
    first: dict[str, float] = {}
    for r in runs:
        o = r.owner or ""
        first[o] = min(first.get(o, r.created), r.created)
    out, n = {}, 0
    for owner in sorted(first, key=first.get):
        if owner in names:
            out[owner] = names[owner]
        elif owner in CLI_OWNERS:
            out[owner] = "command line"
        else:
            n += 1
            out[owner] = f"unnamed {n}"
    return out


def student_label(owner: str, names: dict[str, str]) -> str:
    """One owner's label without the others (an unnamed one as "unnamed"); prefer
    :func:`student_labels`, which numbers them."""
    if owner in names:
        return names[owner]
    return "command line" if owner in CLI_OWNERS else "unnamed"


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
    runs = list(runs)
    labels = student_labels(runs, names)
    by_owner: dict[str, list[RunSnapshot]] = {}
    for r in runs:
        by_owner.setdefault(r.owner or "", []).append(r)
    rows = []
    for owner, mine in by_owner.items():
        latest = max(mine, key=lambda r: r.created)
        accs = [a for a in (_acc(r) for r in mine) if a is not None]
        rows.append(StudentRow(owner, labels[owner], len(fold_children(mine)),
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
