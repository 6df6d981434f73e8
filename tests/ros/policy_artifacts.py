"""Tiny ONNX policies built with onnx.helper (no torch export: milliseconds) and signed artifacts."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from nacl.signing import SigningKey
from onnx import TensorProto, helper, numpy_helper

from saferule_core.artifacts.manifest import ManifestFields
from saferule_core.artifacts.registry import PolicyRegistry
from saferule_core.artifacts.signing import generate_keypair, load_signing_key

BOUND = 5.0


@dataclass(frozen=True)
class TanhPolicy:
    """action = scale * tanh(f(obs) @ W), f = identity, or sqrt (NaN for negative entries), or
    sqrt(-1 - |obs|) (NaN always)."""

    weights: np.ndarray          # [obs_dim, act_dim]
    scale: float = 4.0
    inner: str = "identity"      # "identity", "sqrt", "nan"

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        x = np.asarray(observations, dtype=np.float32)
        if self.inner == "sqrt":
            x = np.sqrt(x)
        return (self.scale * np.tanh(x @ self.weights)).astype(np.float32)

    def onnx_bytes(self) -> bytes:
        obs_dim, act_dim = self.weights.shape
        nodes = []
        inits = [numpy_helper.from_array(self.weights.astype(np.float32), "W"),
                 numpy_helper.from_array(np.array(self.scale, dtype=np.float32), "scale")]
        source = "observation"
        if self.inner == "sqrt":
            nodes.append(helper.make_node("Sqrt", ["observation"], ["inner"]))
            source = "inner"
        elif self.inner == "nan":
            inits.append(numpy_helper.from_array(np.array(-1.0, dtype=np.float32), "minus_one"))
            nodes += [helper.make_node("Abs", ["observation"], ["abs"]),
                      helper.make_node("Sub", ["minus_one", "abs"], ["negative"]),
                      helper.make_node("Sqrt", ["negative"], ["inner"])]
            source = "inner"
        nodes += [helper.make_node("MatMul", [source, "W"], ["z"]),
                  helper.make_node("Tanh", ["z"], ["t"]),
                  helper.make_node("Mul", ["t", "scale"], ["action"])]
        graph = helper.make_graph(
            nodes, "policy",
            [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", obs_dim])],
            [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", act_dim])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(model)
        return model.SerializeToString()


def random_policy(seed: int, obs_dim: int = 7, act_dim: int = 2, inner: str = "identity") -> TanhPolicy:
    return TanhPolicy(np.random.default_rng(seed).normal(size=(obs_dim, act_dim)).astype(np.float32), inner=inner)


def make_keys(directory: Path) -> SigningKey:
    generate_keypair(directory)
    return load_signing_key(directory)


def publish(registry: PolicyRegistry, policy: TanhPolicy, key: SigningKey, parent: str | None = None) -> str:
    obs_dim, act_dim = policy.weights.shape
    fields = ManifestFields(task="BallRun", obs_dim=obs_dim, act_dim=act_dim, action_low=[-BOUND] * act_dim,
                            action_high=[BOUND] * act_dim, dataset_hash="0" * 64, method="test", parent_version=parent)
    return registry.publish(policy.onnx_bytes(), fields, key).version


def copy_artifact(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
