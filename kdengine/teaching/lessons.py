"""Workshop lessons: markdown files with front matter, and instructor links that lock knobs.

A lesson is ``assets/lessons/<id>.md``: YAML front matter between ``---`` lines, then the lesson
text; a ``## What to look for`` heading starts the part shown next to the live chart. Front matter:

    id, order, title
    presets:   [name, ...]     candidates in assets/presets; the first that exists is used
    page:      app_pages/x.py      the page the lesson sends you to (optional)
    method:    name            the method it needs (default: the preset's)
    knobs:     [dotted.path]   what a student may change, and an instructor may lock
    question, answer           the check-your-understanding question; answer shown on demand
    ci:        {dotted: value} overrides that make a fast CI version of the preset

Whether a lesson can run is decided when it is shown (:meth:`Lesson.missing`): a preset, page or
method that is not there makes the lesson say so, never show made-up results.

**Instructor links** are plain query params: ``?lesson=few-labels&lock=method.params.T,train.epochs
&method.params.T=4&train.epochs=10``. Only the lesson's own knobs can be set or locked; each value
is checked against the knob's range and a bad one is dropped with a reason.

**The class lock.** The server, not the URL, holds the locks (:class:`~kdengine.core.class_state.
ClassState`): the instructor opens a lesson for the class (the Instructor page, or an instructor link
opened by the instructor), and every student's page and run follows it until the instructor changes
or lifts it. A link's ``lock=`` opened by a student locks nothing (:func:`link_for_student`).
"""
from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlencode

import yaml

from kdengine.core.class_state import ClassLock, apply_locks
from kdengine.core.config import RunConfig, flatten
from kdengine.core.knobs import ConfigError, check_field, coerce_value, field_specs
from kdengine.core.paths import assets_dir
from kdengine.core.presets import list_presets, load_preset
from kdengine.teaching.class_server import page_url

LOOK_FOR = re.compile(r"^##\s+What to look for\s*$", re.I | re.M)
ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


@dataclass
class Lesson:
    id: str
    order: int
    title: str
    presets: list[str]
    question: str
    answer: str
    body: str = ""
    look_for: str = ""
    page: str | None = None
    method: str | None = None
    knobs: list[str] = field(default_factory=list)
    ci: dict = field(default_factory=dict)

    # ---- what exists ---------------------------------------------------------------------------
    def preset(self) -> str | None:
        """The first candidate preset that exists, or None."""
        shipped = list_presets()
        return next((p for p in self.presets if p in shipped), None)

    def page_exists(self) -> bool:
        return self.page is not None and (assets_dir().parent / self.page).is_file()

    def missing(self) -> list[str]:
        """What this lesson needs that is not built yet (empty: the lesson can run)."""
        from kdengine.methods import method_names
        out = []
        if self.page and not self.page_exists():
            out.append(f"page {self.page}")
        if self.method and self.method not in method_names():
            out.append(f"method {self.method!r}")
        if self.preset() is None:
            out.append(f"preset {' / '.join(self.presets)}")
        elif not out:
            try:    # e.g. a preset naming a method that is not registered yet
                self.base_config()
            except ConfigError as e:
                out.append(f"a preset that loads ({e})")
        return out

    # ---- configs -------------------------------------------------------------------------------
    def base_config(self) -> RunConfig:
        name = self.preset()
        if name is None:
            raise ConfigError("preset", f"lesson {self.id!r} has no preset yet "
                                        f"({', '.join(self.presets)})")
        cfg = load_preset(name)
        cfg.name = f"lesson:{self.id}"
        return cfg

    def config(self, values: Mapping[str, Any] | None = None, fast: bool = False) -> RunConfig:
        """The preset with knob values applied (and the CI overrides when ``fast``)."""
        cfg = self.base_config()
        over = {k: v for k, v in (values or {}).items() if k in self.knobs}
        if fast:
            over.update(self.ci)
        return cfg.with_overrides(over) if over else cfg

    def knob_values(self) -> dict[str, Any]:
        """The preset's value of each knob."""
        flat = flatten(self.base_config().to_dict())
        return {k: flat.get(k) for k in self.knobs}


# ---- loading --------------------------------------------------------------------------------------
def lessons_dir() -> Path:
    return assets_dir() / "lessons"


def parse_lesson(text: str, source: str = "lesson") -> Lesson:
    if not text.startswith("---"):
        raise ValueError(f"{source}: a lesson starts with a '---' front matter block")
    _, front, body = text.split("---", 2)
    meta = yaml.safe_load(front) or {}
    if not ID_RE.match(str(meta.get("id", ""))):
        raise ValueError(f"{source}: id must be lower-case letters, digits and dashes")
    m = LOOK_FOR.search(body)
    intro, look = (body[:m.start()], body[m.end():]) if m else (body, "")
    presets = meta.get("presets") or meta.get("preset") or []
    return Lesson(id=meta["id"], order=int(meta.get("order", 99)), title=str(meta["title"]),
                  presets=[presets] if isinstance(presets, str) else list(presets),
                  question=str(meta["question"]).strip(), answer=str(meta["answer"]).strip(),
                  body=intro.strip(), look_for=look.strip(), page=meta.get("page"),
                  method=meta.get("method"), knobs=list(meta.get("knobs") or []),
                  ci=dict(meta.get("ci") or {}))


def load_lessons() -> list[Lesson]:
    """All lessons in ``assets/lessons``, in their ``order``. Parsed again only when a file changes:
    every page that starts runs reads the class lock's lesson on each rerun."""
    files = tuple((str(p), p.stat().st_mtime_ns) for p in sorted(lessons_dir().glob("*.md")))
    return list(_parsed(files))


@functools.lru_cache(maxsize=8)
def _parsed(files: tuple[tuple[str, int], ...]) -> tuple[Lesson, ...]:
    out = [parse_lesson(Path(p).read_text(encoding="utf-8"), Path(p).name) for p, _ in files]
    return tuple(sorted(out, key=lambda l: (l.order, l.id)))


def get_lesson(lesson_id: str) -> Lesson:
    for lesson in load_lessons():
        if lesson.id == lesson_id:
            return lesson
    raise KeyError(f"no lesson {lesson_id!r}")


# ---- knobs ----------------------------------------------------------------------------------------
def knob_spec(cfg: RunConfig, path: str) -> dict:
    """The ``param()`` spec (type, range, choices, help) of a dotted config field, e.g.
    ``method.params.T`` (the method's Params) or ``teacher.model.width``; ``path`` added."""
    parts = path.split(".")
    if parts[:2] == ["method", "params"] and len(parts) == 3:
        from kdengine.methods import get_method_class
        cls, name = get_method_class(cfg.method.name).Params, parts[2]
    else:
        cls, name = type(cfg), parts[-1]
        obj: Any = cfg
        for part in parts[:-1]:
            obj = getattr(obj, part, None)
            if obj is None or not dataclasses.is_dataclass(obj):
                raise ConfigError(path, "not a config field")
            cls = type(obj)
    for spec in field_specs(cls):
        if spec["name"] == name:
            return {**spec, "path": path}
    raise ConfigError(path, "not a config field")


def check_knob(cfg: RunConfig, path: str, raw: Any) -> Any:
    """Coerce and range-check one knob value (from a URL or a widget); raises ConfigError."""
    spec = knob_spec(cfg, path)
    value = coerce_value(path, raw, spec["type"])
    check_field(path, value, spec)
    return value


# ---- instructor links -----------------------------------------------------------------------------
def lesson_link(lesson_id: str, values: Mapping[str, Any], locked: list[str],
                base: str | None = None) -> str:
    """An instructor link: the lesson, which knobs are locked, and knob values (every locked knob's,
    plus any other given in ``values`` as a starting value). The query string alone, or with
    ``base`` (the server's public URL, :func:`~kdengine.teaching.class_server.public_url`) the
    whole link to the Lessons page."""
    q: dict[str, str] = {"lesson": lesson_id}
    if locked:
        q["lock"] = ",".join(locked)
    for k in list(locked) + [k for k in values if k not in locked]:
        q[k] = _fmt(values[k])
    query = urlencode(q, safe=",")
    return page_url(base, "lessons", query) if base else query


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return "none" if v is None else str(v)


@dataclass
class LinkState:
    lesson: Lesson | None
    locked: dict[str, Any]          # knob -> value the link fixes
    values: dict[str, Any]          # knob -> value the link sets but does not lock
    problems: list[str]
    refused: list[str] = field(default_factory=list)    # link values the class lock overrules


def parse_link(params: Mapping[str, Any], lessons: list[Lesson] | None = None) -> LinkState:
    """Read ``?lesson=..&lock=..&<knob>=..``; refused parts are listed in ``problems``."""
    get = lambda k: (params[k][-1] if isinstance(params[k], list) else params[k])  # noqa: E731
    lessons = lessons if lessons is not None else load_lessons()
    problems: list[str] = []
    if "lesson" not in params:
        return LinkState(None, {}, {}, problems)
    lid = str(get("lesson"))
    lesson = next((l for l in lessons if l.id == lid), None)
    if lesson is None:
        return LinkState(None, {}, {}, [f"lesson: no lesson {lid!r}"])
    lock = [k.strip() for k in str(get("lock")).split(",") if k.strip()] if "lock" in params else []
    locked, values = {}, {}
    cfg = lesson.base_config() if lesson.preset() else None
    # dotted params look like config fields: the lesson's knobs are used, any other is reported
    for k in dict.fromkeys(lock + [k for k in params if "." in k]):
        if k not in lesson.knobs:
            problems.append(f"{k}: not a knob of this lesson (knobs: {', '.join(lesson.knobs)})")
            continue
        if cfg is None:
            continue
        raw = get(k) if k in params else lesson.knob_values().get(k)
        try:
            v = check_knob(cfg, k, None if str(raw).lower() == "none" else raw)
        except ConfigError as e:
            problems.append(f"{k}: {e.message}; using the lesson's value")
            v = lesson.knob_values().get(k)
        (locked if k in lock else values)[k] = v
    return LinkState(lesson, locked, values, problems)


def class_lock(link: LinkState) -> ClassLock | None:
    """The class lock an instructor's link sets (None: the link locks nothing)."""
    if link.lesson is None or not link.locked:
        return None
    return ClassLock(link.lesson.id, dict(link.locked), dict(link.values))


def lesson_lock(lesson_id: str, locked: Mapping[str, Any], values: Mapping[str, Any] | None = None,
                lessons: list[Lesson] | None = None) -> tuple[ClassLock | None, list[str]]:
    """The class lock that fixes ``locked`` (knob -> value, typed or as text) of a lesson, the
    others starting at ``values``, each checked as an instructor link's would be; (None, the
    problems) when anything is refused."""
    given = {**(values or {}), **locked}
    link = parse_link({"lesson": lesson_id, "lock": ",".join(locked),
                       **{k: _fmt(v) for k, v in given.items()}}, lessons)
    if link.problems or not link.locked:
        return None, link.problems or ["lock: name at least one knob to lock"]
    return class_lock(link), []


def lock_state(lock: ClassLock | None, lessons: list[Lesson] | None = None) -> LinkState:
    """The class lock as a :class:`LinkState` (what the pages read); an empty one without a lock
    or when its lesson is gone."""
    lessons = lessons if lessons is not None else load_lessons()
    lesson = next((l for l in lessons if lock is not None and l.id == lock.lesson), None)
    if lock is None or lesson is None:
        return LinkState(None, {}, {}, [])
    return LinkState(lesson, dict(lock.locked), dict(lock.values), [])


def link_for_student(link: LinkState, lock: ClassLock | None,
                     lessons: list[Lesson] | None = None) -> LinkState:
    """What a page works under: the class lock ``lock`` (its lesson, its knobs at its values) and
    a link someone opened (``link``). The link's values for knobs the lock leaves free are starting
    values; a different value for a locked knob is refused, visibly (``refused``); the link's own
    ``lock=`` fixes nothing (only the instructor sets the class lock)."""
    problems, refused = list(link.problems), []
    held = lock_state(lock, lessons) if lock is not None else LinkState(None, {}, {}, [])
    locked = held.locked
    same = held.lesson is None or link.lesson is None or link.lesson.id == held.lesson.id
    asked = {**link.values, **link.locked} if same else {}
    for k, v in asked.items():
        if k in locked and locked[k] != v:
            refused.append(f"{k}: your instructor has fixed it at {_fmt(locked[k])}; the link's "
                           f"{_fmt(v)} is not used")
    unlocked = [k for k in link.locked if k not in locked] if same else []
    if unlocked:
        refused.append(f"lock: only your instructor can fix {', '.join(unlocked)}; the link's "
                       f"values are starting points")
    values = {**held.values, **{k: v for k, v in asked.items() if k not in locked}}
    return LinkState(held.lesson or link.lesson, locked, values, problems, refused)


def free_knobs(fields: list[str], locked: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Split the ``fields`` a sweep or search could vary into those it may vary under ``locked`` and
    the others, each with the reason: a locked knob is fixed, and so is the method while one of its
    knobs is locked (another method starts from its own knob values, which would undo the lock)."""
    method_lock = next((k for k in locked if k.startswith("method.params.")), None)
    why: dict[str, str] = {}
    for k in fields:
        if k in locked:
            why[k] = f"locked at {_fmt(locked[k])}"
        elif k == "method.name" and method_lock:
            why[k] = f"another method would start from its own {method_lock.rsplit('.', 1)[-1]}"
    return [k for k in fields if k not in why], why


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def locks_line(locked: Mapping[str, Any], label: Callable[[str], str] = _short) -> str:
    """One sentence naming every locked knob and its value, for the pages that start runs; ``label``
    names a knob (its dotted path) in words (the pages pass theirs; the default is the field name)."""
    return ("Your instructor has fixed " + ", ".join(f"{label(k)} = {_fmt(v)}" for k, v in locked.items())
            + " for this lesson: every run started here uses those values.")


def locked_note(lesson: Lesson, locked: Mapping[str, Any], label: Callable[[str], str] = _short) -> str:
    """Markdown shown above a lesson's text: the values the class lock fixes, next to the
    preset's values the text was written for."""
    if not locked:
        return ""
    preset = lesson.knob_values() if lesson.preset() else {}
    parts = []
    for k, v in locked.items():
        was = preset.get(k)
        name = label(k)
        parts.append(f"**{name} = {_fmt(v)}**" + (f" (the text below uses {name} = {_fmt(was)})"
                                                 if was is not None and was != v else ""))
    return "In this class your instructor has fixed " + "; ".join(parts) + "."


__all__ = ["Lesson", "LinkState", "apply_locks", "check_knob", "class_lock", "free_knobs", "lesson_lock",
           "link_for_student", "lock_state", "locked_note", "locks_line", "get_lesson", "knob_spec",
           "lesson_link", "load_lessons", "parse_lesson", "parse_link"]
