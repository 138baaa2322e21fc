"""The import layers: no cycles between modules, ``import gapvision`` and ``gapvision --help`` without torch, and no
import-time side effects (matplotlib backend, umask)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "gapvision"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """gapvision modules imported by ``path`` (at module level only, or anywhere)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in _nodes(tree.body, top_level_only):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gapvision")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("gapvision"):
                found.add(mod)
                found |= {f"{mod}.{a.name}" for a in node.names}  # `from . import atomic` imports a module
    return found


#: methods through which an object shows itself in a notebook (pandas' pattern: the display layer is imported when
#: the object is shown, from above); they may import gapvision.display and nothing else
DISPLAY_HOOKS = ("_repr_html_", "show_results", "plot_top_losses")


def _nodes(body: list[ast.stmt], top_level_only: bool):
    """The statements of ``body`` (and, unless ``top_level_only``, everything inside them), skipping
    ``if TYPE_CHECKING:`` blocks, which are not imports at run time."""
    for node in body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.FunctionDef) and node.name in DISPLAY_HOOKS:
            continue  # notebook presentation hooks: they only call up into gapvision.display (checked below)
        yield node
        if not top_level_only:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _nodes([child], False)
                else:
                    yield from (n for n in ast.walk(child) if isinstance(n, (ast.Import, ast.ImportFrom)))


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {i for i in _imports(p, top_level_only) if i in modules and i != m} for m, p in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_module_imports_have_no_cycles():
    """Counting function-local imports too (they only hide a cycle); a package's ``__init__`` is not counted as
    importing its own submodules lazily."""
    graph = _graph(top_level_only=False)
    for m, deps in graph.items():  # a parent package -> its children is the import system, not a dependency
        graph[m] = {d for d in deps if not d.startswith(m + ".")}
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph) or [])


def test_display_hooks_import_only_the_display_layer():
    hooks = 0
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in DISPLAY_HOOKS:
                hooks += 1
                for imp in (n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))):
                    target = "." * getattr(imp, "level", 0) + (getattr(imp, "module", None) or "")
                    assert target.lstrip(".") in ("display", "gapvision.display", "splits_display"), (path, target)
    assert hooks >= 4  # Run (3) and DataSplits, CompareResult, the localisation results


@pytest.mark.parametrize("module, forbidden", [
    ("gapvision.runformat", ("gapvision.models", "gapvision.runs", "gapvision.train")),
    ("gapvision.predictor", ("gapvision.cli", "gapvision.options", "gapvision.runs", "gapvision.runformat",
                             "gapvision.train")),
    ("gapvision.models.weights", ("gapvision.runs",)),
    ("gapvision.options", ("gapvision.cli", "gapvision.models", "gapvision.data")),
    ("gapvision.compare.cli", ("gapvision.cli",)),
    ("gapvision.localize.cli", ("gapvision.cli",)),
    ("gapvision.share", ("gapvision.cli",)),
])
def test_layers(module, forbidden):
    path = PKG / Path(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    bad = {i for i in _imports(path, top_level_only=False) if i.startswith(forbidden)}
    assert not bad, f"{module} imports {sorted(bad)}"


def _run_without_torch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Python with a ``torch`` (and torchvision) package that cannot be imported first on the path."""
    for name in ("torch", "torchvision"):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked by this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["compare", "--help"], ["localize", "--help"],
                                  ["export", "--help"], ["--version"]])
def test_help_does_not_need_torch(tmp_path, argv):
    res = _run_without_torch(tmp_path, "-m", "gapvision", *argv)
    assert res.returncode == 0, res.stderr
    assert "usage: gapvision" in res.stdout or res.stdout.startswith("gapvision ")


def test_import_gapvision_does_not_need_torch(tmp_path):
    code = ("import sys, gapvision; from gapvision import GapvisionError, cli, options, runformat; "
            "assert 'torch' not in sys.modules; print(gapvision.__version__, sorted(gapvision.__all__)[0])")
    res = _run_without_torch(tmp_path, "-c", code)
    assert res.returncode == 0, res.stderr
    res = _run_without_torch(tmp_path, "-c", "import gapvision; gapvision.train")  # the API says what is missing
    assert res.returncode != 0 and "torch is blocked" in res.stderr


def test_lazy_exports_keep_their_names_when_their_submodule_is_imported():
    code = ("import gapvision as gv, gapvision.compare.api, gapvision.localize.cam, gapvision.export, gapvision.report;"
            "from gapvision.localize import cam; "
            "assert all(callable(f) and not isinstance(f, type(gv)) for f in "
            "(gv.compare, gv.localize, gv.export, gv.report, cam)), (gv.compare, gv.localize, cam)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=300)
    assert res.returncode == 0, res.stderr


def test_no_import_time_side_effects(tmp_path):
    """Importing gapvision's modules leaves the matplotlib backend and the umask alone; figures are still drawn."""
    code = f"""
import os, matplotlib
matplotlib.use("svg")
calls = []
real = os.umask
os.umask = lambda m: calls.append(m) or real(m)
import gapvision.atomic, gapvision.plots, gapvision.report, gapvision.compare.summary, gapvision.data.inspect
gapvision.plots.plot_curves([{{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_acc": 0.5, "val_acc": 0.4}}],
                            {str(tmp_path / 'curves.png')!r})
gapvision.atomic.write_text({str(tmp_path / 'a.txt')!r}, "x")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert calls == [], calls
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
