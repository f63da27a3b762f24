"""The three packages are layered one way: iclvsft_tasks <- iclvsft_train <- iclvsft.

Checked from the source (every import statement, also those inside functions), so a lazy import
that reaches upward fails here even if no test happens to execute it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"iclvsft_tasks": ROOT / "iclvsft_tasks", "iclvsft_train": ROOT / "train", "iclvsft": ROOT / "iclvsft"}
#: What each package may import of ours besides itself.
ALLOWED = {"iclvsft_tasks": set(), "iclvsft_train": {"iclvsft_tasks"}, "iclvsft": {"iclvsft_tasks", "iclvsft_train"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of our packages that a file imports (relative imports stay in their package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_packages_import_only_the_layers_below(package: str) -> None:
    files = sorted(PACKAGES[package].rglob("*.py"))
    assert files
    violations = {
        str(path.relative_to(ROOT)): sorted(bad)
        for path in files
        if (bad := imported_packages(path) - ALLOWED[package] - {package})
    }
    assert not violations, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing else of ours'}"


def test_the_check_sees_upward_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from iclvsft.compare import run\n    import iclvsft_train.launch\n")
    assert imported_packages(source) == {"iclvsft", "iclvsft_train"}


def test_all_three_packages_expose_one_version() -> None:
    import iclvsft
    import iclvsft_tasks
    import iclvsft_train

    assert iclvsft.__version__ == iclvsft_tasks.__version__ == iclvsft_train.__version__
    from importlib.metadata import version

    assert version("iclvsft") == iclvsft_tasks.__version__
