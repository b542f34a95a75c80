"""Copy engine definitions, with everything they use, as plain code that runs without the engine.

The exported notebook (:mod:`kdengine.teaching.notebook`) does not carry a second, hand-written copy
of each method: it asks a :class:`Bundle` for the definitions the run needs (the method class, the
data set builder, the model builders, one training step) and gets their source as the engine's
files have it (:mod:`kdengine.core.code`), plus the source of every engine definition that source
names, followed name by name: a function it calls, a class it builds, a constant it reads, the
members of an engine module it reaches through an alias (``adv.boundary_attack``), each copied once.
Imports of other libraries are gathered from the modules' own import lines; imports of engine
modules inside functions are dropped, since what they load is copied too. A few engine helpers
stand in as short shims (the method registry, the knob metadata, the teacher cache; see
:mod:`kdengine.teaching.notebook`).

What it refuses: a definition in an engine module outside :data:`COPYABLE` (the store, the engine's
queue, ...) raises :class:`NotExportable` naming it. Modules serving the multi-label text task only
(:data:`TEXT_ONLY`) are never copied; the names they define stay undefined, in branches that
single-label data never takes.
"""
from __future__ import annotations

import ast
import importlib.util
import textwrap
from dataclasses import dataclass, field

from kdengine.core.code import module_file, parsed, top_level

# Engine modules whose definitions may be copied: plain PyTorch, NumPy and scikit-learn code.
COPYABLE = ("kdengine.losses", "kdengine.data", "kdengine.models", "kdengine.analysis",
            "kdengine.methods", "kdengine.core.config", "kdengine.core.events", "kdengine.core.knobs",
            "kdengine.core.optim", "kdengine.teachers.fitting", "kdengine.run.trainer")
# For the generated text task only (tokens, transformers, Hugging Face).
TEXT_ONLY = ("kdengine.losses.multilabel", "kdengine.data.text", "kdengine.models.transformer",
             "kdengine.models.hf", "kdengine.teachers.hf")


class NotExportable(RuntimeError):
    """The run cannot be written as a plain-PyTorch notebook (the message says what and why;
    ``name``: the engine definition that could not be copied, when that is the reason)."""

    def __init__(self, message: str, name: str = ""):
        super().__init__(message)
        self.name = name


@dataclass
class Piece:
    """One copied top-level statement (or a shim, or a namespace standing in for a module)."""
    name: str
    module: str
    source: str
    order: tuple
    now: set[str] = field(default_factory=set)     # names needed when the statement runs
    later: set[str] = field(default_factory=set)   # names needed when what it defines is called
    section: int = 0
    members: dict = field(default_factory=dict)     # a namespace's attributes -> notebook names


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _imports(module: str) -> dict[str, tuple[str, str, str]]:
    """Bound name -> ("from", module, name) or ("module", module, "") for a module's top-level
    imports (``if TYPE_CHECKING:`` blocks left out: they serve annotations only)."""
    out = {}
    for node in parsed(module_file(module)).tree.body:
        out.update(_bound(node))
    return out


def _bound(node: ast.stmt) -> dict[str, tuple[str, str, str]]:
    out = {}
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        for a in node.names:
            out[a.asname or a.name] = ("from", node.module, a.name)
    elif isinstance(node, ast.Import):
        for a in node.names:
            out[a.asname or a.name.split(".")[0]] = ("module", a.name if a.asname else
                                                     a.name.split(".")[0], a.name)
    return out


class _Names(ast.NodeVisitor):
    """The names a statement reads, split into those read when it runs (``now``: decorators, base
    classes, defaults, class bodies, assigned values) and those read only when what it defines is
    called (``later``: function bodies); ``attrs``: (name, attribute) pairs such as
    ``adv.boundary_attack``. Annotations are skipped: the notebook does not evaluate them."""

    def __init__(self):
        self.now: set[str] = set()
        self.later: set[str] = set()
        self.attrs: set[tuple[str, str]] = set()
        self._deferred = False

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            (self.later if self._deferred else self.now).add(node.id)

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name):
            self.attrs.add((node.value.id, node.attr))
        self.generic_visit(node)

    def visit_arg(self, node):
        pass                                                # annotation only

    def visit_AnnAssign(self, node):
        for part in (node.target, node.value):
            if part is not None:
                self.visit(part)

    def _function(self, node):
        for part in [*node.decorator_list, *node.args.defaults,
                     *[d for d in node.args.kw_defaults if d is not None]]:
            self.visit(part)
        was, self._deferred = self._deferred, True
        for stmt in node.body:
            self.visit(stmt)
        self._deferred = was

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Lambda(self, node):
        was, self._deferred = self._deferred, True
        self.visit(node.body)
        self._deferred = was


def _strip_engine_imports(node: ast.stmt, text: str, first: int) -> tuple[str, dict]:
    """``text`` (the statement's lines, from line ``first``) without its imports of engine modules
    inside functions; returns it and the names those imports bound."""
    bound, drop, parents = {}, [], {}
    for parent in ast.walk(node):
        for body in ("body", "orelse", "finalbody"):
            stmts = getattr(parent, body, None)
            if isinstance(stmts, list):
                for s in stmts:
                    parents[id(s)] = stmts
    for sub in ast.walk(node):
        if sub is node or not isinstance(sub, (ast.Import, ast.ImportFrom)):
            continue
        names = _bound(sub)
        if names and all(v[1].startswith("kdengine") for v in names.values()):
            bound.update(names)
            drop.append(sub)
    if not drop:
        return text, bound
    lines = text.splitlines(keepends=True)
    dropped = {id(s) for s in drop}
    for sub in sorted(drop, key=lambda s: -s.lineno):
        a, b = sub.lineno - first, sub.end_lineno - first + 1
        siblings = parents.get(id(sub), [])
        alone = all(id(s) in dropped for s in siblings)
        keep = [" " * sub.col_offset + "pass\n"] if alone and sub is siblings[0] else []
        lines[a:b] = keep
    return "".join(lines), bound


class Bundle:
    """Definitions gathered for a notebook: ``add(module, name)`` copies one with all it needs;
    ``cells()`` returns the code by section, each in an order that runs top to bottom.

    ``shims``: name -> (section, code, [(module, name) it uses]); an engine definition of that
    (module, name) in ``shim_of`` is replaced by the shim. ``omit``: (module, name) pairs left out
    (the loaders of data sets the run does not use). ``section_of``: module -> section index."""

    def __init__(self, shims: dict, shim_of: dict, omit: set, section_of):
        self.shims, self.shim_of, self.omit = shims, shim_of, omit
        self.section_of = section_of
        self.pieces: dict[str, Piece] = {}
        self.imports: set[tuple[str, str, str]] = set()
        self.omitted: set[str] = set()
        self._origin: dict[str, tuple[str, str]] = {}

    # -- resolving a name read in a module ---------------------------------------------------------
    def _target(self, module: str, name: str, local: dict | None = None):
        """What ``name`` in ``module`` is: ("def", module, name), ("module", engine module),
        ("import", kind, module, original name), or None (a builtin or a local name)."""
        if local and name in local:
            return self._from_import(name, *local[name])
        if name in top_level(module):
            return ("def", module, name)
        imp = _imports(module).get(name)
        return self._from_import(name, *imp) if imp else None

    def _from_import(self, bound: str, kind: str, mod: str, orig: str):
        if not mod.startswith("kdengine"):
            return ("import", kind, mod, orig, bound)
        if kind == "module":
            return ("module", orig)
        if _is_module(f"{mod}.{orig}"):
            return ("module", f"{mod}.{orig}")
        return self._target(mod, orig)

    # -- copying -----------------------------------------------------------------------------------
    def add(self, module: str, name: str) -> str:
        """Copy what ``name`` is in ``module`` (defined there, or imported from another engine
        module: a helper moved elsewhere is followed) and what it needs; returns its notebook name
        (or '' when it is left out)."""
        target = self._target(module, name)
        if target is None or target[0] == "module":
            raise LookupError(f"{module} defines or imports no {name}")
        return self._add_target(target, name)

    def _add_target(self, target, bound: str) -> str:
        kind = target[0]
        if kind == "import":
            _, how, mod, orig, _ = target
            self.imports.add((how, mod, orig, bound))
            return bound
        if kind == "module":
            if target[1].startswith(TEXT_ONLY) or (target[1], "") in self.omit:
                self.omitted.add(bound)
                return ""
            return bound                        # its members are added as they are read
        _, module, name = target
        if module.startswith(TEXT_ONLY) or (module, name) in self.omit:
            self.omitted.add(name)
            return ""
        if (module, name) in self.shim_of:
            return self._add_shim(self.shim_of[(module, name)])
        if not module.startswith(COPYABLE):
            raise NotExportable(f"{name} (in {module}) is engine machinery the notebook cannot copy",
                                name)
        if name in self.pieces:
            if self._origin[name] != (module, name):
                raise NotExportable(f"two definitions named {name}: in {self._origin[name][0]} "
                                    f"and in {module}")
            return name
        self._copy(module, name)
        return name

    def _add_shim(self, name: str) -> str:
        """A shim's code, once for all the names it defines."""
        if name not in self.pieces:
            section, code, uses = self.shims[name]
            piece = next((p for p in self.pieces.values() if p.module == "shim"
                          and p.source == code.strip() + "\n"), None)
            if piece is None:
                piece = Piece(name, "shim", code.strip() + "\n", (-1, name), section=section)
                for mod, dep in uses:
                    piece.later.add(self._add_target(("def", mod, dep), dep))
            self.pieces[name] = piece
            self._origin[name] = ("shim", name)
        return name

    def _copy(self, module: str, name: str) -> None:
        pf = parsed(module_file(module))
        node = top_level(module)[name]
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        text, local = _strip_engine_imports(node, pf.segment(node), first)
        names = _Names()
        names.visit(node)
        rank = self.section_of(module)
        piece = Piece(name, module, textwrap.dedent(text), (rank[1], module, first), section=rank[0])
        self.pieces[name] = piece
        self._origin[name] = (module, name)
        # the names an assignment defines besides ``name`` (a, b = ...) come with it
        for other, n in top_level(module).items():
            if n is node and other != name:
                self.pieces[other] = piece
                self._origin[other] = (module, other)
        # in name order: the same run gives the same notebook, and a refusal names the same part
        for used, phase in ([(n, piece.now) for n in sorted(names.now)]
                            + [(n, piece.later) for n in sorted(names.later)]):
            target = self._target(module, used, local)
            if target is None or (target[0] == "def" and target[1:] == (module, name)):
                continue
            if target[0] == "module":
                got = self._namespace(used, target[1], {a for b, a in names.attrs if b == used})
            else:
                got = self._add_target(target, used)
                if got and got != used and target[0] == "def":  # imported under another name
                    got = self._alias(used, got)
            if got:
                phase.add(got)

    def _alias(self, bound: str, name: str) -> str:
        if bound not in self.pieces:
            self.pieces[bound] = Piece(bound, "alias", f"{bound} = {name}\n",
                                       self.pieces[name].order + (1,), now={name},
                                       section=self.pieces[name].section)
            self._origin[bound] = ("alias", name)
        return bound

    def _namespace(self, bound: str, module: str, attrs: set[str]) -> str:
        """A SimpleNamespace standing in for an engine module read as ``bound.attr``."""
        if not self._add_target(("module", module), bound):
            return ""
        members = {a: self._add_target(t, a) for a in sorted(attrs)
                   if (t := self._target(module, a)) is not None}
        members = {a: n for a, n in members.items() if n}
        piece = self.pieces.get(bound)
        if piece is None:
            piece = Piece(bound, "namespace", "", (), section=self.section_of(module)[0])
            self.pieces[bound] = piece
            self._origin[bound] = ("namespace", module)
            self.imports.add(("from", "types", "SimpleNamespace", "SimpleNamespace"))
        elif self._origin[bound] != ("namespace", module):
            raise NotExportable(f"two definitions named {bound}")
        piece.now |= set(members.values())
        piece.members.update(members)
        inner = ", ".join(f"{a}={n}" for a, n in sorted(piece.members.items()))
        piece.source = (f"# the parts of the app's module {module.rsplit('.', 1)[-1]} that the code "
                        f"above uses, under the name it uses\n"
                        f"{bound} = SimpleNamespace({inner})\n")
        piece.order = (9, module, 10**9)
        return bound

    # -- writing -----------------------------------------------------------------------------------
    def import_lines(self) -> list[str]:
        """The other libraries' imports the copied code needs, as its modules write them."""
        froms: dict[str, set[str]] = {}
        plain = set()
        for how, mod, orig, bound in self.imports:
            if how == "from":
                froms.setdefault(mod, set()).add(orig if orig == bound else f"{orig} as {bound}")
            else:         # ``import a.b`` binds a; ``import a.b as c`` binds c
                plain.add(f"import {orig}" if mod == bound else f"import {orig} as {bound}")
        return sorted(plain) + [f"from {m} import {', '.join(sorted(ns))}"
                                for m, ns in sorted(froms.items())]

    def sections(self, n: int) -> list[list[str]]:
        """The pieces' code by section, each section in an order that runs top to bottom. A piece
        that an earlier section uses (when it runs, or when the code there is called) moves up to
        that section, so each section runs once the ones before it have."""
        pieces = {id(p): p for p in self.pieces.values()}.values()
        changed = True
        while changed:
            changed = False
            for p in pieces:
                for dep in p.now | p.later:
                    d = self.pieces.get(dep)
                    if d is not None and d.section > p.section:
                        d.section, changed = p.section, True
        out = []
        for s in range(n):
            todo = sorted((p for p in pieces if p.section == s), key=lambda p: p.order)
            done: list[Piece] = []
            placed: set[int] = set()
            while todo:
                for p in todo:
                    need = [self.pieces[d] for d in p.now if d in self.pieces]
                    if all(id(d) in placed or d.section < s for d in need if d is not p):
                        break
                else:   # cannot happen for code that runs as a module; keep the source order
                    p = todo[0]
                todo.remove(p)
                done.append(p)
                placed.add(id(p))
            out.append([p.source for p in done])
        return out
