"""PID-Lagrangian multiplier (Stooke et al. 2020, as used by OSRL's BCQ-Lag).

The controller watches a measured cost (e.g. the mean cost-Q of the current policy) and returns a
multiplier lambda >= 0 for the penalty lambda * (cost - threshold):

    e_t = mean(measured) - threshold
    I_t = max(0, I_{t-1} + e_t)
    D_t = max(0, e_t - e_{t-1})
    lambda_t = max(0, KP * max(0, e_t) + KI * I_t + KD * D_t)

State lives in tensor buffers so that `update` never leaves torch (no host sync) and
`state_dict()` saves it with the model. A controller for K stacked models (`algos.stacked`) has
buffers of shape [K] and is fed measurements [K, B]: each model gets its own multiplier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PIDGains:
    kp: float = 0.1
    ki: float = 0.003
    kd: float = 0.001


class PIDLagrangian(nn.Module):
    integral: torch.Tensor
    previous_error: torch.Tensor
    multiplier: torch.Tensor

    def __init__(self, threshold: float, gains: PIDGains | None = None) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.gains = gains or PIDGains()
        self.register_buffer("integral", torch.zeros(()))
        self.register_buffer("previous_error", torch.zeros(()))
        self.register_buffer("multiplier", torch.zeros(()))

    @torch.no_grad()
    def update(self, measured: torch.Tensor) -> torch.Tensor:
        """Feed one measurement [B] (its mean is used); return the new multiplier (0-dim tensor).
        With [K]-shaped state, `measured` is [K, B] and the multiplier [K]."""
        g = self.gains
        error = measured.detach().float().flatten(start_dim=self.integral.dim()).mean(dim=-1) - self.threshold
        derivative = torch.relu(error - self.previous_error)
        self.integral.copy_(torch.relu(self.integral + error))
        self.previous_error.copy_(error)
        self.multiplier.copy_(torch.relu(g.kp * torch.relu(error) + g.ki * self.integral + g.kd * derivative))
        return self.multiplier.clone()
