"""Shared fixtures: simulated plugin distributions and small grid files."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from harness import registry


def install_fake_distribution(
    root: Path, name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]
) -> Path:
    """Write modules plus a ``.dist-info`` folder, as ``pip install`` would leave them."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[kdbench]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Install fake plugin distributions on sys.path; the registry reloads afterwards."""
    added: list[str] = []

    def install(
        name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]
    ) -> None:
        root = install_fake_distribution(tmp_path / name, name, version, entry_points, modules)
        sys.path.insert(0, str(root))
        added.append(str(root))
        registry.reload()

    yield install
    for path in added:
        sys.path.remove(path)
    for module in [m for m in sys.modules if m.startswith("fakeplug_")]:
        del sys.modules[module]
    registry.reload()


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kdbench-example-objective"
