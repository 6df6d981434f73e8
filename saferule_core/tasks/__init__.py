"""Safe RL tasks behind one Gymnasium-style interface (cost in info['cost']).

The environment classes load gymnasium (and a simulator) on first use, so that importing the
task table (`saferule_core.tasks.spec`) stays cheap for commands that never simulate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saferule_core.tasks.spec import TASKS, TaskSpec, get_task

if TYPE_CHECKING:
    from saferule_core.tasks.envs import SafeEnv, SafeVectorEnv, make_env

__all__ = ["TASKS", "SafeEnv", "SafeVectorEnv", "TaskSpec", "get_task", "make_env"]

_ENV_NAMES = ("SafeEnv", "SafeVectorEnv", "make_env")


def __getattr__(name: str) -> Any:
    if name in _ENV_NAMES:
        from saferule_core.tasks import envs

        return getattr(envs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
