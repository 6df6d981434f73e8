from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from saferule_core.artifacts.checks import check_policy_io, check_policy_outputs, measure_latency_us, open_session
from saferule_core.errors import ArtifactError

PolicyBuilder = Callable[..., bytes]
LOW, HIGH = np.array([-1.0, -1.0]), np.array([1.0, 1.0])


def observations(rows: int = 32, width: int = 3, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(1).standard_normal((rows, width)) * scale).astype(np.float32)


def test_good_policy_passes_and_returns_its_actions(policy_onnx: PolicyBuilder) -> None:
    model_bytes = policy_onnx()
    obs = observations()
    actions = check_policy_outputs(open_session(model_bytes), obs, LOW, HIGH)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load_model_from_string(model_bytes).graph.initializer}
    np.testing.assert_allclose(actions, np.tanh(obs @ weights["W"]), atol=1e-6)
    assert np.abs(actions).max() > 0.5  # not a trivial all-zero output


def test_accepts_a_path_and_bytes(policy_onnx: PolicyBuilder, tmp_path: Path) -> None:
    path = tmp_path / "policy.onnx"
    path.write_bytes(policy_onnx())
    from_path = check_policy_outputs(path, observations(), LOW, HIGH)
    from_bytes = check_policy_outputs(policy_onnx(), observations(), LOW, HIGH)
    np.testing.assert_array_equal(from_path, from_bytes)


def test_nan_graph_is_refused(policy_onnx: PolicyBuilder) -> None:
    with pytest.raises(ArtifactError, match=r"non-finite actions \(NaN/inf\) in 32 of 32 rows"):
        check_policy_outputs(policy_onnx(nan=True), observations(), LOW, HIGH)


def test_out_of_bounds_is_refused(policy_onnx: PolicyBuilder) -> None:
    with pytest.raises(ArtifactError, match=r"out-of-bounds actions in \d+ of 32 rows; worst: row \d+, dim \d"):
        check_policy_outputs(policy_onnx(scale=2.0), observations(), LOW, HIGH)


def test_bounds_are_per_dimension(policy_onnx: PolicyBuilder) -> None:
    with pytest.raises(ArtifactError, match=r"dim 1: -?[\d.]+ (< low -0\.1|> high 0\.1)"):
        check_policy_outputs(policy_onnx(), observations(), [-1.0, -0.1], [1.0, 0.1])


def test_observation_width_mismatch_is_refused(policy_onnx: PolicyBuilder) -> None:
    with pytest.raises(ArtifactError, match="width 3, expected 5 .*obs_dim mismatch"):
        check_policy_outputs(policy_onnx(), observations(width=5), LOW, HIGH)


def test_action_dim_mismatch_is_refused(policy_onnx: PolicyBuilder) -> None:
    with pytest.raises(ArtifactError, match="width 2, expected 3 .*act_dim mismatch"):
        check_policy_outputs(policy_onnx(), observations(), [-1.0] * 3, [1.0] * 3)


def test_symbolic_width_is_checked_by_running(policy_onnx: PolicyBuilder) -> None:
    # A graph that declares its feature width symbolically still fails when run on the wrong width.
    model = onnx.load_model_from_string(policy_onnx())
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    with pytest.raises(ArtifactError, match="policy failed to run on 32 observations of width 5"):
        check_policy_outputs(model.SerializeToString(), observations(width=5), LOW, HIGH)


def test_wrong_names_and_fixed_batch_are_refused(policy_onnx: PolicyBuilder) -> None:
    with pytest.raises(ArtifactError, match=r"inputs are \['obs'\], expected exactly one named 'observation'"):
        check_policy_io(policy_onnx(input_name="obs"), 3, 2)
    with pytest.raises(ArtifactError, match="outputs are"):
        check_policy_io(policy_onnx(output_name="act"), 3, 2)
    with pytest.raises(ArtifactError, match="fixed batch size 1"):
        check_policy_io(policy_onnx(batch=1), 3, 2)


def test_bad_observations_and_models_are_refused(policy_onnx: PolicyBuilder, tmp_path: Path) -> None:
    obs = observations()
    obs[3, 1] = np.nan
    with pytest.raises(ArtifactError, match="observations contain NaN"):
        check_policy_outputs(policy_onnx(), obs, LOW, HIGH)
    with pytest.raises(ArtifactError, match=r"\[N, obs_dim\]"):
        check_policy_outputs(policy_onnx(), np.zeros(3, np.float32), LOW, HIGH)
    with pytest.raises(ArtifactError, match="cannot load ONNX model"):
        open_session(b"not an onnx model")
    with pytest.raises(ArtifactError, match="does not exist"):
        open_session(tmp_path / "missing.onnx")


def test_measure_latency(policy_onnx: PolicyBuilder) -> None:
    p50, p99 = measure_latency_us(policy_onnx(), np.zeros(3, np.float32), runs=50, warmup=5)
    assert 0.0 < p50 <= p99
