"""The package's layers import only the layers below them: the design's dependency rule as a test.

Order, bottom to top: utils → diffusion → data → sae → training → toy → analysis → editing →
report → serve → cli. The SAE package never imports diffusers or the backbone (it sees tensors),
and nothing below the CLI imports the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hsae"
LAYERS = (
    "utils",
    "diffusion",
    "data",
    "sae",
    "training",
    "toy",
    "analysis",
    "editing",
    "report",
    "serve",
    "cli",
)


def _imports(path: Path) -> list[str]:
    """Every module `path` imports (absolute imports only: the package uses no relative ones)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


def _layer_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] in LAYERS)


@pytest.mark.parametrize("path", _layer_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_layer_imports_only_layers_below_it(path: Path) -> None:
    own = LAYERS.index(path.relative_to(PACKAGE).parts[0])
    upward = [
        m
        for m in _imports(path)
        if m.startswith("hsae.")
        and m.split(".")[1] in LAYERS
        and LAYERS.index(m.split(".")[1]) > own
    ]
    assert upward == [], f"{path.relative_to(PACKAGE)} imports a higher layer: {upward}"


def test_the_sae_package_sees_only_tensors() -> None:
    for path in (PACKAGE / "sae").rglob("*.py"):
        bad = [
            m
            for m in _imports(path)
            if m.split(".")[0] == "diffusers" or m.startswith(("hsae.diffusion", "hsae.data"))
        ]
        assert bad == [], f"{path.relative_to(PACKAGE)} imports {bad}"
