"""The layer order the code obeys (docs/architecture.md), checked on the source itself."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "brainlm"
#: Bottom to top; a module may import from its own layer and the ones before it.
LAYERS = ("errors", "version", "validation", "data", "simulate", "model", "checkpoints", "train", "tasks", "report", "demo", "commands")


def _brainlm_imports(tree: ast.AST):
    """(node, imported module) for every ``import brainlm...`` / ``from brainlm... import``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and (node.module == "brainlm" or node.module.startswith("brainlm.")):
            yield node, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "brainlm" or alias.name.startswith("brainlm."):
                    yield node, alias.name


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def test_no_brainlm_import_is_hidden_inside_a_function():
    """Imports inside functions used to hide cycles between layers; every internal import now
    sits at the top of its module, where the layer check sees it."""
    hidden = []
    for path, tree in _modules():
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node, module in _brainlm_imports(fn):
                    hidden.append(f"{path.relative_to(ROOT)}:{node.lineno} {module}")
    assert hidden == [], "imports inside functions:\n" + "\n".join(hidden)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_layer_imports_only_from_layers_below():
    """The same rule import-linter enforces in CI, spelled out so that a failure here names the
    file and line."""
    upward = []
    for path, tree in _modules():
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1 and rel.stem not in LAYERS:
            continue  # the package root re-exports the high-level API
        own = LAYERS.index(rel.parts[0] if len(rel.parts) > 1 else rel.stem)
        for node, module in _brainlm_imports(tree):
            target = _layer(module)
            # The root re-exports the tasks layer's API: below the commands, use brainlm.version.
            root = module == "brainlm" and own < LAYERS.index("commands")
            if root or (target is not None and target > own):
                upward.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {module}")
    assert upward == [], "imports that point up the layers:\n" + "\n".join(upward)


def test_import_linter_contract_holds():
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    # lint-imports reads the contract from pyproject.toml in the working directory.
    run = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    # Both contracts: the layer order, and no file I/O in the model layer.
    assert "2 kept, 0 broken" in run.stdout
