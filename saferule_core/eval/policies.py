"""Policies to evaluate, as the simulator sees them (raw observations -> env actions): a deployable
torch module, or a published artifact run exactly as the robots run it (verified, ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from saferule_core.tasks.spec import PolicyFn


def module_policy(module: Any) -> PolicyFn:
    """A deployable torch policy module (e.g. `learner.deployable_policy()`), run without autograd."""
    import torch

    def act(observations: NDArray[Any]) -> NDArray[Any]:
        with torch.inference_mode():
            actions: NDArray[Any] = module(torch.from_numpy(np.array(observations, dtype=np.float32))).numpy()
            return actions

    return act


def registry_policy(registry_dir: Path, version: str, verify_key_dir: Path) -> PolicyFn:
    """A registry version, its signature and checks verified, run by ONNX Runtime."""
    from saferule_core.artifacts.checks import open_session
    from saferule_core.artifacts.registry import PolicyRegistry
    from saferule_core.artifacts.signing import load_verify_key

    loaded = PolicyRegistry(registry_dir).load(version, load_verify_key(verify_key_dir))
    session = open_session(loaded.onnx_bytes)
    manifest = loaded.manifest

    def act(observations: NDArray[Any]) -> NDArray[Any]:
        (actions,) = session.run([manifest.action_output], {manifest.observation_input: observations})
        return np.asarray(actions)

    return act
