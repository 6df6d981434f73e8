"""The soft hinge every bounded Safe-RULE term is built from."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_hinge(x: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """tau * softplus(x / tau): ~max(x, 0), smooth; its gradient sigmoid(x / tau) lies in (0, 1) and
    vanishes once x < 0 by a few tau (the constraint x <= 0 is met), so the term saturates."""
    return temperature * F.softplus(x / temperature)
