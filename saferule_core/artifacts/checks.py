"""What a policy runner checks before it switches to an artifact: I/O shapes, finite, bounded actions.

Needs only onnxruntime and numpy: the runner process never imports torch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from saferule_core.artifacts.manifest import ACTION_OUTPUT, OBSERVATION_INPUT, validate_action_bounds
from saferule_core.errors import ArtifactError
from saferule_core.io_utils import read_regular_file
from saferule_core.limits import MAX_ONNX_BYTES, LimitError

SessionSource: TypeAlias = "ort.InferenceSession | bytes | Path | str"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def open_session(model: bytes | Path | str) -> ort.InferenceSession:
    """A CPU session with one intra-op thread (a control loop's latency, not throughput)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if isinstance(model, bytes):
        source, where = model, "from bytes"
    else:
        source, where = _read_model(Path(model)), str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types, none shared
        raise ArtifactError(f"cannot load ONNX model {where}: {_first_line(err)}") from None


def _read_model(path: Path) -> bytes:
    """A model file's bytes: a regular file within MAX_ONNX_BYTES (onnxruntime given the path
    would read a device or a FIFO without end)."""
    try:
        return read_regular_file(path, MAX_ONNX_BYTES)
    except FileNotFoundError:
        raise ArtifactError(f"ONNX model {path} does not exist") from None
    except LimitError as err:
        raise ArtifactError(f"refusing to read {err}") from None
    except OSError as err:
        raise ArtifactError(f"cannot read ONNX model {path}: {err.strerror}") from None


def _as_session(source: SessionSource) -> ort.InferenceSession:
    return source if isinstance(source, ort.InferenceSession) else open_session(source)


def _check_tensor(kind: str, nodes: list[Any], name: str, width: int) -> None:
    names = [node.name for node in nodes]
    if names != [name]:
        raise ArtifactError(f"policy {kind}s are {names}, expected exactly one named '{name}'")
    node = nodes[0]
    if node.type != "tensor(float)":
        raise ArtifactError(f"policy {kind} '{name}' is {node.type}, expected tensor(float) (float32)")
    shape = list(node.shape)
    if len(shape) != 2:
        raise ArtifactError(f"policy {kind} '{name}' has shape {shape}, expected [batch, {width}]")
    batch, dim = shape
    if isinstance(batch, int):
        raise ArtifactError(f"policy {kind} '{name}' has a fixed batch size {batch}; "
                            f"export it with a dynamic batch axis")
    # A symbolic feature dimension cannot be checked here; running the policy checks it.
    if isinstance(dim, int) and dim != width:
        raise ArtifactError(f"policy {kind} '{name}' has width {dim}, expected {width} "
                            f"({'obs_dim' if kind == 'input' else 'act_dim'} mismatch)")


def check_policy_io(session: SessionSource, obs_dim: int, act_dim: int, input_name: str = OBSERVATION_INPUT,
                    output_name: str = ACTION_OUTPUT) -> ort.InferenceSession:
    """Refuse a model whose declared input/output is not float32 [batch, obs_dim] -> [batch, act_dim]."""
    session = _as_session(session)
    _check_tensor("input", session.get_inputs(), input_name, obs_dim)
    _check_tensor("output", session.get_outputs(), output_name, act_dim)
    return session


def _out_of_bounds_message(actions: NDArray[Any], low: NDArray[Any], high: NDArray[Any], below: NDArray[Any],
                           above: NDArray[Any]) -> str:
    rows = int((below | above).any(axis=1).sum())
    excess = np.maximum(low - actions, 0.0) + np.maximum(actions - high, 0.0)
    row, dim = np.unravel_index(int(np.argmax(excess)), excess.shape)
    value = float(actions[row, dim])
    side = f"< low {low[dim]:g}" if below[row, dim] else f"> high {high[dim]:g}"
    return (f"policy produces out-of-bounds actions in {rows} of {len(actions)} rows; "
            f"worst: row {row}, dim {dim}: {value:g} {side}")


def check_policy_outputs(session_or_path: SessionSource, observations: NDArray[Any],
                         action_low: NDArray[Any] | list[float], action_high: NDArray[Any] | list[float], *,
                         input_name: str = OBSERVATION_INPUT, output_name: str = ACTION_OUTPUT,
                         bound_tolerance: float = 1e-5) -> NDArray[Any]:
    """Run the policy on `observations` [N, obs_dim]; return its actions [N, act_dim] if all are finite
    and within [action_low, action_high] (plus `bound_tolerance` x max(1, |bound|) for float rounding).

    Raises ArtifactError naming the problem: wrong declared shapes, a failed run, a wrong output
    shape, non-finite actions, or out-of-bounds actions.
    """
    obs = np.asarray(observations, dtype=np.float32)
    if obs.ndim != 2 or obs.shape[0] == 0:
        raise ArtifactError(f"observations must be a non-empty [N, obs_dim] array, got shape {list(obs.shape)}")
    if not np.isfinite(obs).all():
        raise ArtifactError("observations contain NaN or inf; cannot judge the policy on them")
    act_dim = np.asarray(action_low).size
    low, high = validate_action_bounds(action_low, action_high, act_dim)
    session = check_policy_io(session_or_path, obs.shape[1], act_dim, input_name, output_name)
    try:
        (actions,) = session.run([output_name], {input_name: np.ascontiguousarray(obs)})
    except Exception as err:  # onnxruntime's own exception types
        raise ArtifactError(f"policy failed to run on {obs.shape[0]} observations of width {obs.shape[1]}: "
                            f"{_first_line(err)}") from None
    actions = np.asarray(actions)
    if actions.shape != (obs.shape[0], act_dim):
        raise ArtifactError(f"policy output has shape {list(actions.shape)}, expected [{obs.shape[0]}, {act_dim}]")
    finite = np.isfinite(actions)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise ArtifactError(f"policy produces non-finite actions (NaN/inf) in {bad_rows.size} of "
                            f"{len(actions)} rows (first: row {int(bad_rows[0])})")
    tol_low = bound_tolerance * np.maximum(1.0, np.abs(low))
    tol_high = bound_tolerance * np.maximum(1.0, np.abs(high))
    below = actions < low - tol_low
    above = actions > high + tol_high
    if below.any() or above.any():
        raise ArtifactError(_out_of_bounds_message(actions.astype(np.float64), low, high, below, above))
    return actions


def measure_latency_us(session: SessionSource, observation: NDArray[Any], runs: int = 1000, warmup: int = 50,
                       input_name: str = OBSERVATION_INPUT) -> tuple[float, float]:
    """p50 and p99 wall time of single-observation runs, in microseconds."""
    session = _as_session(session)
    feed = {input_name: np.ascontiguousarray(np.asarray(observation, dtype=np.float32).reshape(1, -1))}
    for _ in range(warmup):
        session.run(None, feed)
    durations = np.empty(runs, dtype=np.float64)
    # One run per sample is the point here: the runner's control loop calls the policy once per tick.
    for i in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        durations[i] = time.perf_counter_ns() - start
    p50, p99 = np.percentile(durations, [50, 99]) / 1000.0
    return float(p50), float(p99)
