"""The package's layers (lib/__init__.py, docs/design.md §5): every import inside lib/ points to
its own layer or one below, no two modules import each other (directly or round a longer
circle, at the top or inside a function), and the layers that must not import torch do not."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"
LAYERS = ["common", "core", "training", "experiments", "report", "pipeline"]  # bottom to top


def _imports(path: Path) -> list[str]:
    """Every module a file imports, at the top or inside a function, as an absolute name."""
    package = ".".join(path.relative_to(LIB.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's package, up level - 1
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                out.append(".".join(base + ([node.module] if node.module else [])))
            else:
                out.append(node.module)
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "lib" and len(parts) > 1 and parts[1] in LAYERS else None


@pytest.mark.parametrize("path", sorted(p for p in LIB.rglob("*.py") if p.parent != LIB),
                         ids=lambda p: str(p.relative_to(LIB)))
def test_imports_point_down(path):
    own = LAYERS.index(path.relative_to(LIB).parts[0])
    up = [m for m in _imports(path) if (_layer(m) or 0) > own]
    assert not up, f"{path.relative_to(LIB)} imports from a higher layer: {up}"


def _module_of(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """``{module: the lib modules it imports}``; ``from package import name`` counts the submodule
    ``package.name`` where there is one."""
    modules = {_module_of(p): p for p in LIB.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                (base,) = _imports_of_node(node, path)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            out |= {t for t in targets if t in modules and t != name}
        graph[name] = out
    return graph


def _imports_of_node(node: ast.ImportFrom, path: Path) -> list[str]:
    package = ".".join(path.relative_to(LIB.parent).with_suffix("").parts[:-1])
    if node.level:
        base = package.split(".")[:len(package.split(".")) - node.level + 1]
        return [".".join(base + ([node.module] if node.module else []))]
    return [node.module]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected sets of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_circle_and_nothing_else():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    """Package __init__ files that import their own submodules are left out (Python handles
    that order); every other circle, function-local imports included, is a fault."""
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in _graph().items()}
    assert cycles(graph) == []


@pytest.mark.parametrize("modules", [
    "lib.common.files, lib.common.paths, lib.common.versions, lib.common.notebooks, lib.common.resources",
    "lib.training.image_files",
    "lib.pipeline.runner, lib.pipeline.grid, lib.pipeline.execute, lib.pipeline.manifest",
    "lib.experiments.registry, lib.experiments.schema, lib.experiments.resume, lib.experiments.progress, "
    "lib.experiments.records, lib.experiments.stats, lib.experiments.cells",
    "lib.report.build, lib.report.anchors, lib.report.manifest",
])
def test_no_torch_below_the_line(modules):
    code = f"import sys, {modules}; print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", modules


def test_the_public_api_is_one_import_away_and_loads_torch_only_when_used():
    code = ("import sys, lib; print(any(m == 'torch' for m in sys.modules)); "
            "from lib import cdg; print(any(m == 'torch' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
    import importlib

    import lib
    from lib.core import estimators, models, resnet
    assert (lib.cdg, lib.nes, lib.ste, lib.smoothed_exact) == (estimators.cdg, estimators.nes, estimators.ste,
                                                               estimators.smoothed_exact)
    assert lib.BinaryMLP is models.BinaryMLP and lib.xnor_resnet18 is resnet.xnor_resnet18
    for name in ("toy", "thin_resnet", "convergence"):
        assert getattr(lib, f"run_{name}") is importlib.import_module(f"lib.experiments.{name}.run").run
    assert set(lib.__all__) <= set(dir(lib))
    with pytest.raises(AttributeError, match="no attribute 'cgd'"):
        lib.cgd
