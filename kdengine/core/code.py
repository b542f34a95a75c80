"""The engine's code as text: the source of a definition, read from the file its module was loaded
from (found with ``inspect``) and parsed once per version of that file.

The Lab shows a method's ``loss_terms`` from here, and the notebook export copies definitions from
here, so both show the file that trains: a method copied into a new file shows that file's code,
and an edited file is read again (the cache is keyed by the file's modification time and size).
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ParsedFile:
    path: Path
    text: str
    lines: list[str]
    tree: ast.Module

    def segment(self, node: ast.AST) -> str:
        """The lines of a statement, decorators included, as written in the file."""
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return "".join(self.lines[first - 1:node.end_lineno])


_cache: dict[Path, tuple[tuple[int, int], ParsedFile]] = {}
_lock = threading.Lock()


def parsed(path: str | Path) -> ParsedFile:
    """A source file's text and syntax tree, read again only when the file changed."""
    path = Path(path).resolve()
    st = os.stat(path)
    stamp = (st.st_mtime_ns, st.st_size)
    with _lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    text = path.read_text(encoding="utf-8")
    pf = ParsedFile(path, text, text.splitlines(keepends=True), ast.parse(text, str(path)))
    with _lock:
        _cache[path] = (stamp, pf)
    return pf


def module_file(module: str) -> Path:
    """The file a module is (or would be) loaded from."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise LookupError(f"no Python source for module {module}")
    return Path(spec.origin)


def top_level(module: str) -> dict[str, ast.stmt]:
    """Name -> the top-level statement of a module that defines it (def, class or assignment)."""
    out: dict[str, ast.stmt] = {}
    for node in parsed(module_file(module)).tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        out.setdefault(n.id, node)
    return out


def class_member(cls: type, name: str) -> tuple[type, ast.FunctionDef]:
    """(the class in ``cls``'s MRO that defines method ``name``, that method's syntax node), read
    from the class's own file."""
    for klass in cls.__mro__:
        if name not in vars(klass):
            continue
        pf = parsed(inspect.getsourcefile(klass))
        node = next((n for n in pf.tree.body if isinstance(n, ast.ClassDef)
                     and n.name == klass.__name__), None)
        if node is None:
            raise LookupError(f"class {klass.__name__} is not defined at the top of {pf.path.name}")
        fn = next((n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                   and n.name == name), None)
        if fn is None:
            raise LookupError(f"{klass.__name__}.{name} is not in the class body in {pf.path.name}")
        return klass, fn
    raise LookupError(f"{cls.__name__} has no {name}")


def method_source(cls: type, name: str = "loss_terms") -> str:
    """The source of ``cls.<name>`` (inherited or its own), dedented, as its file has it now."""
    klass, fn = class_member(cls, name)
    return textwrap.dedent(parsed(inspect.getsourcefile(klass)).segment(fn))


def term_names(cls: type) -> list[str]:
    """The loss terms a method's ``loss_terms`` returns, as its code names them (the string keys of
    the dicts it builds and of the ones it assigns to, in the order they are written), then any
    other weighted term the class declares: the names the pages chart them under (``loss/<term>``)."""
    names = []
    for node in ast.walk(class_member(cls, "loss_terms")[1]):
        if isinstance(node, ast.Dict):
            keys = node.keys
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name)):       # terms["bss"] = ..., not self._x["y"]
            keys = [node.slice]
        else:
            continue
        names += [(k.lineno, k.col_offset, k.value) for k in keys
                  if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    return list(dict.fromkeys([n for *_, n in sorted(names)] + list(getattr(cls, "weight_knobs", {}))))
