"""The plugin system: entry points, provenance, failures, environment controls."""

from __future__ import annotations

import pytest
import torch
from conftest import EXAMPLE

from harness import Outputs, get_objective, registry
from harness.errors import OptionError, PluginError

BUILTIN_OBJECTIVES = {"none", "outkd", "featkd", "dist", "takd", "lift", "place"}


def test_builtins_are_registered_through_entry_points_with_provenance():
    table = registry.entries("objective")
    assert BUILTIN_OBJECTIVES <= set(table)
    prov = table["place"].provenance
    assert prov.distribution == "kdbench"
    assert prov.version == "0.1.0"
    assert prov.module == "plugins.objectives.place"
    assert {"unet", "dit", "mmdit"} <= set(registry.entries("backbone"))
    assert "digits" in registry.entries("dataset")
    assert "local" in registry.entries("executor")


def test_unknown_name_suggests_the_closest_and_lists_valid():
    with pytest.raises(PluginError) as err:
        registry.lookup("objective", "plaec")
    message = str(err.value)
    assert "did you mean 'place'?" in message
    assert "valid: " in message and "outkd" in message


def test_unknown_option_lists_valid_options():
    with pytest.raises(OptionError, match=r"no option 'group_sise'.*did you mean 'group_size'"):
        get_objective("place", group_sise=4)


def test_example_plugin_is_listed_and_usable(fake_dist):
    source = (EXAMPLE / "kdbench_example_objective.py").read_text()
    fake_dist(
        "kdbench-example-objective",
        "0.1.0",
        {"cosine": "fakeplug_cosine"},
        {"fakeplug_cosine": source},
    )
    entry = registry.entries("objective")["cosine"]
    assert entry.provenance.distribution == "kdbench-example-objective"
    assert entry.provenance.version == "0.1.0"
    s = torch.randn(2, 3, 4, 4)
    assert get_objective("cosine")(Outputs(s), Outputs(3 * s))["loss"].item() < 1e-6


def test_plugin_that_raises_on_import_is_reported_and_others_work(fake_dist):
    fake_dist(
        "broken-plugin",
        "1.0",
        {"broken": "fakeplug_broken"},
        {"fakeplug_broken": "raise RuntimeError('boom at import')\n"},
    )
    failures = {f.plugin: f.error for f in registry.failures()}
    assert failures["broken"] == "RuntimeError: boom at import"
    assert "place" in registry.entries("objective")
    with pytest.raises(PluginError, match="failed to load: broken"):
        registry.lookup("objective", "nonexistent")


def test_plugin_registering_a_wrong_type_is_reported(fake_dist):
    fake_dist(
        "wrong-type",
        "1.0",
        {"wrongtype": "fakeplug_wrong"},
        {
            "fakeplug_wrong": """
        from harness import hookimpl

        class NotAnObjective:
            name = "oops"

        @hookimpl
        def register_objectives(register):
            register(NotAnObjective)
    """
        },
    )
    failures = {f.plugin: f.error for f in registry.failures()}
    assert "not a subclass of harness.objective.Objective" in failures["wrongtype"]
    assert "oops" not in registry.entries("objective")


def test_plugin_with_an_unknown_hook_fails_loudly(fake_dist):
    with pytest.raises(PluginError, match="unknown hook"):
        fake_dist(
            "typo-hook",
            "1.0",
            {"typo": "fakeplug_typo"},
            {
                "fakeplug_typo": """
            from harness import hookimpl

            @hookimpl
            def register_objectivez(register):
                pass
        """
            },
        )


def test_disable_and_load_only_environment_variables(monkeypatch):
    monkeypatch.setenv("KDBENCH_DISABLE_PLUGINS", "objectives_place")
    registry.reload()
    assert "place" not in registry.entries("objective")
    assert "lift" in registry.entries("objective")
    monkeypatch.delenv("KDBENCH_DISABLE_PLUGINS")
    monkeypatch.setenv("KDBENCH_LOAD_PLUGINS", "objectives_outkd,backbones_unet")
    registry.reload()
    assert set(registry.entries("objective")) == {"outkd"}
    assert set(registry.entries("backbone")) == {"unet"}
    monkeypatch.delenv("KDBENCH_LOAD_PLUGINS")
    registry.reload()
    assert BUILTIN_OBJECTIVES <= set(registry.entries("objective"))
