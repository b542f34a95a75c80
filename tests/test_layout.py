"""The engine's layout rules, checked from the source: packages import only the packages below
them (so there are no import circles), and the engine never imports Streamlit, ``ui`` or pages."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "kdengine"
# Bottom-up: a package may import itself and the packages before it, never one after it.
# analysis sits below methods: BSS attacks the teacher with the boundary tools.
ORDER = ["core", "losses", "data", "models", "teachers", "analysis", "methods", "run", "teaching",
         "experiments"]
TOP = {"cli", "__main__", "__init__"}     # the CLI and the facade sit above everything


def _imports(path: Path) -> list[str]:
    """Absolute module names imported anywhere in the file (lazy imports in functions too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; kdengine uses absolute imports so a "
                                 f"moved module keeps its meaning")
    return out


def _package(path: Path) -> str:
    rel = path.relative_to(ENGINE).parts
    return rel[0] if len(rel) > 1 else Path(rel[0]).stem


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_engine_module_is_in_a_known_package():
    for f in ENGINE.rglob("*.py"):
        assert _package(f) in ORDER or _package(f) in TOP, f"{f}: not in a layered package"


def test_packages_import_only_packages_below_them():
    bad = []
    for f in ENGINE.rglob("*.py"):
        pkg = _package(f)
        if pkg in TOP:
            continue
        for mod in _imports(f):
            parts = mod.split(".")
            if parts[0] != "kdengine" or len(parts) < 2 or parts[1] not in ORDER:
                continue
            if ORDER.index(parts[1]) > ORDER.index(pkg):
                bad.append(f"{f.relative_to(ROOT)} ({pkg}) imports {mod}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    modules = {_module_name(f): f for f in ENGINE.rglob("*.py")}
    graph = {m: {i for i in _imports(f) if i in modules and i != m} for m, f in modules.items()}
    # a package's __init__ re-exports its own modules: an edge into your own package's __init__
    # from inside it is the package importing itself, not a circle
    for m in graph:
        graph[m] = {d for d in graph[m] if not (m.startswith(d + "."))}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(graph[m]):
            visit(d)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_engine_never_imports_streamlit_ui_or_pages():
    for f in ENGINE.rglob("*.py"):
        for mod in _imports(f):
            assert mod.split(".")[0] not in ("streamlit", "ui", "app_pages"), f"{f} imports {mod}"


def test_every_public_name_resolves_and_import_stays_cheap():
    """``kdengine`` lists its public names and loads each on first use: importing the package
    itself must not pull in torch (the web app's first page renders before torch is loaded)."""
    import subprocess
    import sys
    code = ("import sys, kdengine; assert 'torch' not in sys.modules, 'import kdengine loaded torch'; "
            "missing = [n for n in kdengine.__all__ if getattr(kdengine, n, None) is None]; "
            "assert not missing, missing")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_callers_import_public_names_from_the_facade():
    """Pages, ``ui``, the CLI, benches and scripts take a name the facade offers from ``kdengine``
    itself, not from the module that happens to define it today."""
    import kdengine
    public = {attr: pub for pub, (_, attr) in kdengine._API.items()}
    files = [ROOT / "kdengine" / "cli.py"] + [f for d in ("app_pages", "ui", "bench", "scripts")
                                               for f in (ROOT / d).glob("*.py")]
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdengine."):
                bad += [f"{f.relative_to(ROOT)}: {a.name} from {node.module} (use kdengine.{public[a.name]})"
                        for a in node.names if a.name in public]
    assert not bad, "\n".join(bad)
