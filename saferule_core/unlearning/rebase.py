"""Re-basing a learner's observation normalisation onto new statistics without changing what it computes.

A learner normalises observations with the mean/std of its whole training set
(`NormalizationStats`), so after an approximate unlearning method the model would still carry
statistics of the forget data. `rebase_observation_stats` swaps them for statistics of the
retained data and folds the change into the first linear layer of every network that reads the
normalised observation. With u = (x - m_new) / s_new the input the network now receives,

    (x - m_old) / s_old = u * r + d,   r = s_new / s_old,   d = (m_new - m_old) / s_old
    W_obs' = W_obs diag(r),            b' = b + W_obs d

so every network (targets included) is the same function of the raw observation x as before, up
to float32 rounding; the unlearning updates that follow then see retained-data normalisation.

Why one table keyed by network class, here: where the observation enters is a property of the
network classes in `algos/networks.py` (each puts the observation FIRST in its input, before
actions or latents), not of the learners, so one table covers BC, BCQ-Lag, CPQ and their target
copies without each learner restating it; and only unlearning ever needs to move the statistics
(training computes them once from the data it trains on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from saferule_core.algos.base import Learner
from saferule_core.algos.batch import OBS_STD_EPS, NormalizationStats
from saferule_core.algos.networks import (
    ConditionalVAE,
    EnsembleCritic,
    EnsembleLinear,
    PerturbationActor,
    SquashedDeterministicActor,
    SquashedGaussianActor,
)
from saferule_core.data.dataset import OfflineDataset
from saferule_core.errors import UnlearningError

# For each network class: its layers whose input starts with the normalised observation.
OBSERVATION_INPUT_LAYERS: dict[type[nn.Module], Callable[[Any], list[nn.Module]]] = {
    EnsembleCritic: lambda net: [net.layers[0]],
    PerturbationActor: lambda net: [net.net[0]],
    SquashedDeterministicActor: lambda net: [net.net[0]],
    SquashedGaussianActor: lambda net: [net.trunk[0]],
    ConditionalVAE: lambda net: [net.encoder[0], net.decoder[0]],
}


def retained_observation_stats(learner: Learner, retained: OfflineDataset) -> NormalizationStats:
    """The statistics the learner would have been given had it been trained on `retained`: the
    mean/std of the part it trains on (BC-Safe: the safe episodes), floored by OBS_STD_EPS as
    `NormalizationStats.from_dataset` does, with the learner's own action bounds."""
    data = learner.training_data(retained, learner.config)
    fresh = NormalizationStats.from_dataset(data, learner.config.normalize_observations)
    current = learner.info.stats
    return NormalizationStats(fresh.obs_mean, fresh.obs_std, current.action_low, current.action_high)


def rebase_observation_stats(learner: Learner, new_stats: NormalizationStats) -> int:
    """Give `learner` `new_stats`, rewriting its networks in place so that each computes the same
    function of the raw observation. Returns how many layers were rewritten: 0 when the learner
    does not normalise observations (its statistics are the identity; nothing to re-base).

    Raises UnlearningError for statistics of other sizes or action bounds (the unit-box action
    mapping would change), a std below the OBS_STD_EPS floor or not finite, or a network whose
    observation input this module does not know.
    """
    if not learner.config.normalize_observations:
        return 0
    old = learner.info.stats
    _check_compatible(old, new_stats)
    old_mean, old_std = old.obs_mean.astype(np.float64), old.obs_std.astype(np.float64)
    scale = new_stats.obs_std.astype(np.float64) / old_std
    shift = (new_stats.obs_mean.astype(np.float64) - old_mean) / old_std
    layers = _observation_input_layers(learner)
    with torch.no_grad():
        for layer in layers:
            _rewrite_first_columns(layer, old.obs_dim, scale, shift)
    learner.info = replace(learner.info, stats=new_stats)
    return len(layers)


def _check_compatible(old: NormalizationStats, new: NormalizationStats) -> None:
    if new.obs_dim != old.obs_dim:
        raise UnlearningError(f"cannot re-base the observation statistics: the model has {old.obs_dim} observation "
                              f"features, the new statistics {new.obs_dim}")
    if not (np.array_equal(new.action_low, old.action_low) and np.array_equal(new.action_high, old.action_high)):
        raise UnlearningError("cannot re-base the observation statistics: the new statistics have other action "
                              f"bounds ({new.action_low.tolist()}..{new.action_high.tolist()}, the model has "
                              f"{old.action_low.tolist()}..{old.action_high.tolist()})")
    if not (np.isfinite(new.obs_mean).all() and np.isfinite(new.obs_std).all()):
        raise UnlearningError("cannot re-base the observation statistics: the new mean or std is not finite")
    if (new.obs_std < np.float32(OBS_STD_EPS)).any():
        raise UnlearningError(f"cannot re-base the observation statistics: the new std has entries below the "
                              f"floor {OBS_STD_EPS:g} (min {float(new.obs_std.min()):g})")


def _observation_input_layers(learner: Learner) -> list[nn.Module]:
    """Every layer reading the normalised observation, each once; refuses a network with weights
    in which no known observation-reading network was found."""
    layers: dict[int, nn.Module] = {}
    for name, network in learner.networks().items():
        found = False
        for module in network.modules():
            locate = OBSERVATION_INPUT_LAYERS.get(type(module))
            if locate is not None:
                found = True
                layers.update((id(layer), layer) for layer in locate(module))
        if not found and any(True for _ in network.parameters()):
            raise UnlearningError(f"cannot re-base the observation statistics of {learner.info.algo}: its network "
                                  f"{name!r} ({type(network).__name__}) is not one whose observation input is known")
    return list(layers.values())


def _rewrite_first_columns(layer: nn.Module, obs_dim: int, scale: NDArray[Any], shift: NDArray[Any]) -> None:
    """W_obs <- W_obs diag(scale), b <- b + W_obs shift for the first `obs_dim` inputs of `layer`."""
    weight = cast(torch.Tensor, layer.weight)
    bias = cast("torch.Tensor | None", layer.bias)
    scale_t = torch.as_tensor(scale, dtype=torch.float64, device=weight.device)
    shift_t = torch.as_tensor(shift, dtype=torch.float64, device=weight.device)
    if isinstance(layer, nn.Linear) and bias is not None and layer.in_features >= obs_dim:
        w_obs = weight[:, :obs_dim].double()                               # [out, obs]
        bias.copy_((bias.double() + w_obs @ shift_t).to(bias.dtype))
        weight[:, :obs_dim] = (w_obs * scale_t).to(weight.dtype)
    elif isinstance(layer, EnsembleLinear) and bias is not None and layer.in_features >= obs_dim:
        w_obs = weight[:, :obs_dim, :].double()                            # [members, obs, out]
        bias.copy_((bias.double() + torch.einsum("i,mio->mo", shift_t, w_obs).unsqueeze(1)).to(bias.dtype))
        weight[:, :obs_dim, :] = (w_obs * scale_t[None, :, None]).to(weight.dtype)
    else:
        raise UnlearningError(f"cannot re-base a {type(layer).__name__} layer: expected a linear layer with a bias "
                              f"and at least {obs_dim} inputs")
