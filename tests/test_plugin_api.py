"""The plugin author's API: ``import kdbench`` serves what ``harness`` serves, lazily."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import harness
import kdbench
from harness import registry


def test_kdbench_serves_every_name_of_harness():
    assert kdbench.__all__ == harness.__all__
    for name in kdbench.__all__:
        assert getattr(kdbench, name) is getattr(harness, name), name


def test_every_exported_name_resolves_and_dir_lists_it():
    missing = [name for name in harness.__all__ if not hasattr(harness, name)]
    assert missing == []
    assert set(kdbench.__all__) <= set(dir(kdbench))


def test_both_imports_give_one_hook_marker_and_one_version():
    assert kdbench.hookimpl is harness.hookimpl
    assert kdbench.__version__ == harness.__version__
    assert kdbench.__version__ != ""


def test_unknown_names_raise_attribute_error():
    for module in (kdbench, harness):
        try:
            module.no_such_name  # noqa: B018
        except AttributeError as exc:
            assert "no_such_name" in str(exc)
        else:
            raise AssertionError(f"{module.__name__}.no_such_name resolved")


def test_import_kdbench_does_not_import_torch():
    code = "import sys, kdbench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


SOURCE = '''
import torch
{imports}

class {cls}({base}Objective):
    """A test objective."""
    name = "{name}"

    def forward(self, student, teacher, step=0, total_steps=1):
        {prefix}check_pair(student.pred, teacher.pred)
        return {{"loss": (student.pred - teacher.pred.detach()).abs().mean()}}

@{prefix}hookimpl
def register_objectives(register):
    register({cls})
'''


def _plugin(name: str, style: str) -> str:
    if style == "kdbench":
        fmt = {"imports": "import kdbench", "base": "kdbench.", "prefix": "kdbench."}
    else:
        fmt = {"imports": "from harness import Objective, check_pair, hookimpl", "base": ""}
        fmt["prefix"] = ""
    return textwrap.dedent(SOURCE.format(cls=f"L1{style}", name=name, **fmt))


def test_plugins_written_with_either_import_are_registered(fake_dist):
    fake_dist(
        "fakeplug-styles",
        "1.0",
        {"l1k": "fakeplug_l1k", "l1h": "fakeplug_l1h"},
        {"fakeplug_l1k": _plugin("l1k", "kdbench"), "fakeplug_l1h": _plugin("l1h", "harness")},
    )
    import torch

    s, t = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    for name in ("l1k", "l1h"):
        assert registry.entries("objective")[name].provenance.distribution == "fakeplug-styles"
        assert (
            kdbench.get_objective(name)(kdbench.Outputs(s), kdbench.Outputs(t))["loss"].item()
            == 1.0
        )
