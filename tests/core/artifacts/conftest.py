"""Fixtures for the artifact tests: key pairs, manifest fields, and small ONNX policies built with
onnx.helper (no torch, so registry and check tests stay fast)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from nacl.signing import SigningKey, VerifyKey
from onnx import TensorProto, helper, numpy_helper

from saferule_core.artifacts.manifest import ManifestFields
from saferule_core.artifacts.signing import generate_keypair, load_signing_key

OBS_DIM = 3
ACT_DIM = 2

PolicyBuilder = Callable[..., bytes]


def build_policy_onnx(obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM, *, scale: float = 1.0, nan: bool = False,
                      batch: int | str = "batch", input_name: str = "observation",
                      output_name: str = "action", seed: int = 0) -> bytes:
    """action = scale * tanh(observation @ W); with nan=True every action is 0/0."""
    weights = np.random.default_rng(seed).standard_normal((obs_dim, act_dim)).astype(np.float32)
    nodes = [helper.make_node("MatMul", [input_name, "W"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["squashed"])]
    last = "squashed"
    if nan:
        nodes += [helper.make_node("Sub", ["pre", "pre"], ["zero"]),
                  helper.make_node("Div", ["zero", "zero"], ["not_a_number"]),
                  helper.make_node("Add", ["squashed", "not_a_number"], ["poisoned"])]
        last = "poisoned"
    nodes.append(helper.make_node("Mul", [last, "scale"], [output_name]))
    graph = helper.make_graph(
        nodes, "policy",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, obs_dim])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, act_dim])],
        initializer=[numpy_helper.from_array(weights, "W"),
                     numpy_helper.from_array(np.full(act_dim, scale, dtype=np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def policy_onnx() -> PolicyBuilder:
    return build_policy_onnx


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    generate_keypair(directory)
    return directory


@pytest.fixture
def signing_key(key_dir: Path) -> SigningKey:
    return load_signing_key(key_dir)


@pytest.fixture
def verify_key(signing_key: SigningKey) -> VerifyKey:
    return signing_key.verify_key


@pytest.fixture
def make_fields() -> Callable[..., ManifestFields]:
    def make(**overrides: object) -> ManifestFields:
        values: dict[str, object] = dict(task="BallRun", obs_dim=OBS_DIM, act_dim=ACT_DIM, action_low=[-1.0, -1.0],
                                         action_high=[1.0, 1.0], dataset_hash="ab" * 32, method="bc",
                                         metrics={"normalized_reward": 0.5, "normalized_cost": 0.8})
        values.update(overrides)
        return ManifestFields(**values)  # type: ignore[arg-type]

    return make
