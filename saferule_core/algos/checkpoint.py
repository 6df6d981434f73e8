"""Saving and loading trained learners.

A model directory holds
  model.pt     torch payload: format tag, algorithm, config, model info (task, obs/act dims,
               dataset hash, normalisation stats), learner state (networks, optimizers) and the
               trainer's state for resuming;
  config.json  the same metadata in readable form (no weights).
Both files are written atomically. Loading uses `torch.load(weights_only=True)`: a checkpoint can
hold tensors and plain containers only, never code.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from saferule_core.algos.base import Learner, ModelInfo
from saferule_core.algos.registry import config_from_dict, get_algo
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import ModelError, SafeRuleError
from saferule_core.io_utils import atomic_write_bytes, atomic_write_json
from saferule_core.tasks.spec import PolicyFn

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
FORMAT = "saferule-model"
FORMAT_VERSION = 1


def save_model(directory: Path, learner: Learner, trainer_state: dict[str, Any] | None = None) -> Path:
    """Write `learner` (and, for resuming, `trainer_state`) to `directory`; returns model.pt's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    trainer_state = trainer_state or {}
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": learner.config_dict(),
        "info": learner.info.to_dict(),
        "state": learner.state_dict(),
        "trainer": trainer_state,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    model_path = directory / MODEL_FILE
    atomic_write_bytes(model_path, buffer.getvalue())
    atomic_write_json(directory / CONFIG_FILE, {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "algo": learner.info.algo,
        "config": learner.config_dict(),
        "info": learner.info.to_dict(),
        "num_updates": learner.num_updates,
        "train": trainer_state.get("train_config", {}),
    })
    return model_path


def read_checkpoint(directory: Path) -> dict[str, Any]:
    """The raw payload of `directory/model.pt`, checked for format; ModelError if absent or corrupt."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise ModelError(f"no trained model at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ModelError(f"{path} is not a readable model checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path} is not a SafeRULE model checkpoint")
    if payload.get("version") != FORMAT_VERSION:
        raise ModelError(f"{path} has checkpoint version {payload.get('version')}, this build reads {FORMAT_VERSION}")
    return payload


def check_compatible(info: ModelInfo, dataset: OfflineDataset) -> None:
    """Refuse a model whose observation/action sizes differ from the dataset's."""
    if (info.obs_dim, info.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise ModelError(f"the model ({info.algo}, task {info.task or '?'}) expects obs_dim={info.obs_dim}, "
                         f"act_dim={info.act_dim} but the dataset (task {dataset.task or '?'}) has "
                         f"obs_dim={dataset.obs_dim}, act_dim={dataset.act_dim}")


def learner_from_payload(payload: dict[str, Any], device: str = "cpu") -> Learner:
    try:
        info = ModelInfo.from_dict(payload["info"])
        spec = get_algo(info.algo)
        config = config_from_dict(spec.config_class, {**payload["config"], "device": device})
        learner = spec.learner_class(config, info)
        learner.load_state_dict(payload["state"])
    except SafeRuleError as err:
        raise ModelError(f"the checkpoint's settings are not usable: {err}") from err
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelError(f"the checkpoint does not match its algorithm's networks ({type(err).__name__}: {err})") from err
    return learner


def load_learner(directory: Path, dataset: OfflineDataset | None = None, device: str = "cpu") -> Learner:
    """The learner saved in `directory`; with `dataset`, also check that its spaces match."""
    learner = learner_from_payload(read_checkpoint(directory), device)
    if dataset is not None:
        check_compatible(learner.info, dataset)
    return learner


def load_policy(directory: Path, dataset: OfflineDataset | None = None) -> tuple[PolicyFn, str]:
    """(policy_fn, task name): policy_fn maps float32 obs [B, obs_dim] to deterministic actions
    [B, act_dim] in [-1, 1] (the unit box; `Learner.deployable_policy` gives env-scaled ones)."""
    learner = load_learner(directory, dataset)
    return policy_function(learner), learner.info.task


def policy_function(learner: Learner) -> PolicyFn:
    """`learner`'s deterministic policy as a function of float32 obs [B, obs_dim] to unit-box
    actions [B, act_dim] (a snapshot: later updates of the learner do not reach it)."""
    policy = learner.deployable_policy()
    obs_dim = learner.info.obs_dim

    def policy_fn(observations: NDArray[Any]) -> NDArray[Any]:
        obs = np.array(observations, dtype=np.float32)  # a private, writable copy for from_numpy
        if obs.ndim != 2 or obs.shape[1] != obs_dim:
            raise ModelError(f"policy expects observations of shape [B, {obs_dim}], got {obs.shape}")
        with torch.inference_mode():
            return policy.unit_actions(torch.from_numpy(obs)).numpy()

    return policy_fn
