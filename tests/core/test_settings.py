"""saferule_core.settings: the one mapping -> typed config path (learner, unlearning, demo settings)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from saferule_core.algos.registry import make_config
from saferule_core.errors import ConfigError, UnlearningError
from saferule_core.settings import coerce_setting, settings_from_mapping
from saferule_core.unlearning.config import UnlearnConfig


@dataclass
class Inner:
    rate: float = 1.0
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    steps: int = 10
    hidden: tuple[int, ...] = (32, 32)
    enabled: bool = False
    label: str = "x"
    inner: Inner = field(default_factory=Inner)

    def validate(self) -> None:
        if self.steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.steps}")


def test_values_become_their_declared_types_and_sections_nest() -> None:
    config = settings_from_mapping(Outer, {"steps": 3, "hidden": [8, 4], "enabled": True,
                                           "inner": {"rate": 2, "names": ["a", "b"]}}, "outer")
    assert config == Outer(steps=3, hidden=(8, 4), enabled=True, inner=Inner(rate=2.0, names=["a", "b"]))
    assert isinstance(config.inner.rate, float) and isinstance(config.hidden, tuple)
    assert settings_from_mapping(Outer, {}, "outer") == Outer()


@pytest.mark.parametrize(("values", "message"), [
    ({"stepz": 1}, r"unknown outer settings: stepz \(known: enabled, hidden, inner, label, steps\)"),
    ({"steps": "10"}, "steps must be an integer, got '10'"),
    ({"steps": True}, "steps must be an integer, got True"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"enabled": "yes"}, "enabled must be true or false"),
    ({"label": 3}, "label must be a string"),
    ({"hidden": [8, "wide"]}, r"hidden\[1\] must be an integer, got 'wide'"),
    ({"hidden": 8}, "hidden must be a list of integers, got 8"),
    ({"inner": {"rate": "fast"}}, "inner.rate must be a number, got 'fast'"),
    ({"inner": {"colour": 1}}, r"unknown inner settings: colour \(known: names, rate\)"),
    ({"inner": 5}, "inner must be a mapping of Inner settings, got 5"),
])
def test_every_bad_value_is_one_error_of_the_callers_type(values: dict[str, object], message: str) -> None:
    with pytest.raises(UnlearningError, match=message):
        settings_from_mapping(Outer, values, "outer", UnlearningError)


def test_a_non_mapping_is_refused_and_the_dataclass_validates_itself_last() -> None:
    with pytest.raises(ConfigError, match="outer settings must be a mapping, got list"):
        settings_from_mapping(Outer, [1, 2], "outer")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="steps must be positive"):
        settings_from_mapping(Outer, {"steps": 0}, "outer", UnlearningError)


def test_exponent_notation_that_yaml_reads_as_a_string_is_the_number() -> None:
    assert settings_from_mapping(Inner, {"rate": "1e-4"}, "inner").rate == pytest.approx(1e-4)
    assert settings_from_mapping(Inner, {"rate": "-2.5E+3"}, "inner").rate == -2500.0
    for text in ("fast", "1e", "nan", "1e-4x"):
        with pytest.raises(ConfigError, match="rate must be a number"):
            settings_from_mapping(Inner, {"rate": text}, "inner")
    with pytest.raises(ConfigError, match="steps must be an integer"):
        settings_from_mapping(Outer, {"steps": "1e3"}, "outer")


def test_optional_values() -> None:
    assert coerce_setting("x", int | None, None) is None
    assert coerce_setting("x", float | None, 3) == 3.0
    with pytest.raises(ConfigError, match="x must be"):
        coerce_setting("x", int | None, "3")


def test_learner_and_unlearning_configs_use_it() -> None:
    assert make_config("bcq_lag", {"actor_hidden": [16, 16]}).actor_hidden == (16, 16)   # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="actor_hidden must be a list of integers"):
        make_config("bcq_lag", {"actor_hidden": "wide"})
    config = UnlearnConfig.from_dict({"steps": 7, "safe_rule": {"cost_weight": 2, "select_by": "model"}})
    assert config.safe_rule.cost_weight == 2.0 and isinstance(config.safe_rule.cost_weight, float)
    with pytest.raises(UnlearningError, match="safe_rule.select_every must be an integer, got '25'"):
        UnlearnConfig.from_dict({"safe_rule": {"select_every": "25"}})
    with pytest.raises(UnlearningError, match="unknown unlearning settings: stepz"):
        UnlearnConfig.from_dict({"stepz": 3})


def test_a_compute_section_groups_how_the_work_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from saferule_core.commands.train import read_train_settings

    path = tmp_path / "learner.yaml"
    path.write_text("phi: 0.2\ncompute: {precision: bf16, num_threads: 1, tune_allocator: false}\n"
                    "train: {batch_size: 64}\n")
    learner, train = read_train_settings(path)
    assert learner == {"phi": 0.2, "precision": "bf16"}
    assert train == {"batch_size": 64, "num_threads": 1, "tune_allocator": False}
    assert UnlearnConfig.from_dict({"steps": 5, "compute": {"num_threads": 1}}) == UnlearnConfig(steps=5, num_threads=1)


@pytest.mark.parametrize(("text", "message"), [
    ("compute: {precision: bf16}\nprecision: fp32\n", "precision set both in `compute` and at the top level"),
    ("compute: {num_threads: 1}\ntrain: {num_threads: 2}\n", "num_threads set both in `compute` and in `train`"),
    ("compute: {phi: 0.2}\n", "unknown compute settings phi (known: precision, compile"),
    ("compute: 4\n", "`compute` must be a mapping"),
])
def test_a_compute_section_refuses_unknown_keys_and_a_setting_given_twice(tmp_path, text: str,  # type: ignore[no-untyped-def]
                                                                          message: str) -> None:
    from saferule_core.commands.train import read_train_settings

    path = tmp_path / "learner.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_train_settings(path)
    with pytest.raises(UnlearningError, match="unknown compute settings steps"):
        UnlearnConfig.from_dict({"compute": {"steps": 5}})
