"""The package's layers (lib/__init__.py, docs/design.md §5): every import inside lib/ points to
its own layer or one below, and the layers that must not import torch do not."""
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
