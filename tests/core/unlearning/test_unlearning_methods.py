"""The method registry is the one list of unlearning methods, and everything that names methods follows it."""

from __future__ import annotations

import argparse
import importlib

import pytest

from saferule_core.commands import unlearn as unlearn_command
from saferule_core.errors import UnlearningError
from saferule_core.unlearning.config import SECTIONS, UnlearnConfig
from saferule_core.unlearning.methods import APPROXIMATE_METHODS, METHOD_NAMES, METHODS, get_method, methods_help


def test_every_method_has_a_runner_and_its_settings_section() -> None:
    assert set(METHOD_NAMES) == {"safe_rule", "retrain", "finetune", "neggrad_plus", "trajdeleter", "sisa"}
    for method in METHODS.values():
        module, _, function = method.runner.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), method.runner
        if method.settings_section is not None:
            assert method.settings_section in SECTIONS
            assert isinstance(getattr(UnlearnConfig(), method.settings_section), SECTIONS[method.settings_section])
    sectioned = {m.settings_section for m in METHODS.values() if m.settings_section}
    assert sectioned == set(SECTIONS), "a settings section no method reads"
    assert set(APPROXIMATE_METHODS) == {"safe_rule", "finetune", "neggrad_plus", "trajdeleter"}


def test_unknown_method_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UnlearningError, match="unknown unlearning method 'forget_harder'; known: safe_rule, retrain"):
        get_method("forget_harder")
    with pytest.raises(UnlearningError, match="unknown unlearning method 3"):
        get_method(3)  # type: ignore[arg-type]


def test_cli_offers_exactly_the_registered_methods_and_describes_each() -> None:
    parser = argparse.ArgumentParser()
    unlearn_command.register(parser.add_subparsers())
    subparser = parser._subparsers._group_actions[0].choices["unlearn"]  # type: ignore[union-attr]
    method_action = next(a for a in subparser._actions if a.dest == "method")
    assert tuple(method_action.choices) == METHOD_NAMES
    description = subparser.description or ""
    for method in METHODS.values():
        assert f"{method.name}  " in methods_help() and method.summary in description
