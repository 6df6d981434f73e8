"""The one reader of YAML settings files (learner, training, unlearning, demo and node configs).

    values = load_settings_file(path, "unlearning settings")

A settings file is a regular file of at most MAX_SETTINGS_FILE_BYTES holding a YAML mapping (an
empty file is an empty mapping). Every problem is one error naming the file and what it should
hold; the caller's error type is kept, so each command reports it as its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from saferule_core.errors import ConfigError, SafeRuleError
from saferule_core.io_utils import read_regular_file
from saferule_core.limits import LimitError

MAX_SETTINGS_FILE_BYTES = 1024 * 1024


def load_settings_file(path: Path | str, what: str, error: type[SafeRuleError] = ConfigError) -> dict[str, Any]:
    """The mapping in the YAML file at `path` (`what` names its content in errors)."""
    path = Path(path).expanduser()
    try:
        raw = read_regular_file(path, MAX_SETTINGS_FILE_BYTES)
    except FileNotFoundError:
        raise error(f"no settings file {path} (expected {what})") from None
    except LimitError as err:
        raise error(f"cannot read the settings file {path}: {err}") from None
    except OSError as err:
        raise error(f"cannot read the settings file {path}: {err.strerror or err}") from None
    try:
        values = yaml.safe_load(raw.decode("utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise error(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(values, dict):
        raise error(f"{path} must hold a mapping of {what}, got {type(values).__name__}")
    return values
