"""What one update reads and writes, for one model or for K stacked models.

A learner that can train in a stack (`Learner.stackable`) writes its update once, as
`update_step(state, batch, noise)`, against a `ModelState`:

* for a single learner the state holds its own modules' live parameters, optimizers and
  controllers, and `state.run(fn, *args)` simply calls `fn`;
* for K stacked models (`algos.stacked.LearnerStack`) every parameter, optimizer state and
  controller buffer carries a leading model axis [K, ...], the batch and noise tensors do too, and
  `state.run` maps `fn` over that axis with `torch.func.vmap`: each layer becomes one batched matmul
  over the K weight sets, and model k's numbers never mix with model j's. Phases written for a
  leading model axis themselves (`StackableLinear`, `EnsembleCritic`) go through `state.run_batched`
  instead, and oneDNN's fused bfloat16 kernels (no batching rule) through `state.run_each`, once
  per model: on CPU both are several times faster than vmap's stacked elementwise ops and casts.

Phase functions (`fn`) are pure: they take parameter dicts and tensors, call networks through
`bind`, and draw no random numbers (noise comes in as arguments, drawn per model by
`Learner.draw_noise` from the model's own generator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

Params = dict[str, torch.Tensor]
"""One network's parameters by name ([K, ...] each when stacked)."""


@dataclass
class ModelState:
    params: dict[str, Params]                       # network name -> its parameters
    optimizers: dict[str, torch.optim.Optimizer]
    controllers: dict[str, nn.Module]               # parameter-free state (PID-Lagrangian): [K] buffers when stacked
    models: int | None = None                       # None: one learner, no model axis

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, mapped over the leading model axis of every argument when stacked."""
        if self.models is None:
            return fn(*args)
        return vmap(fn)(*args)

    def run_batched(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` as it is, stacked or not: for phases written for any leading axes (the stack's
        model axis goes through each op as a batch axis, e.g. `EnsembleCritic`), which run much faster
        than under `vmap` (whose elementwise ops and copies on the stacked layout dominate)."""
        return fn(*args)

    def run_each(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Like `run`, but a stack calls `fn` once per model (on model k's slice of every argument)
        and stacks the results: for ops that have no batching rule (oneDNN's fused kernels)."""
        if self.models is None:
            return fn(*args)
        results = [fn(*tree_map(lambda t, k=k: t[k], args)) for k in range(self.models)]
        return tree_map(lambda *parts: torch.stack(parts), *results)

    def step(self, optimizer: str, loss: torch.Tensor) -> None:
        """One optimizer step on `loss` (the sum over models: model k's loss only reaches model k)."""
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()


class _Method(nn.Module):
    """Runs `method` of the wrapped module, so that `functional_call` can reach methods other than forward."""

    def __init__(self, inner: nn.Module, method: str) -> None:
        super().__init__()
        self.inner = inner
        self.method = method

    def forward(self, *args: Any) -> Any:
        return getattr(self.inner, self.method)(*args)


def bind(module: nn.Module, params: Params, method: str = "forward") -> Callable[..., Any]:
    """`module.<method>` computed with `params` in place of the module's own parameters."""
    wrapper = _Method(module, method)
    prefixed = {f"inner.{name}": value for name, value in params.items()}

    def call(*args: Any) -> Any:
        return functional_call(wrapper, prefixed, args)

    return call


def live_params(module: nn.Module) -> Params:
    return dict(module.named_parameters())


@torch.no_grad()
def lerp_params(target: Params, source: Params, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, for every parameter, in one fused call."""
    names = list(target)
    torch._foreach_lerp_([target[n] for n in names], [source[n] for n in names], tau)
