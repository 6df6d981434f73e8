"""Network building blocks shared by the learners.

Conventions: every network works on NORMALISED observations and on actions in the unit box
[-1, 1]^act_dim. Only `DeployablePolicy` sees raw observations and env-scaled actions; it wraps a
policy core together with the normalisation constants so that one module goes from sensor values
to motor commands.

Critics are ensembles evaluated in one batched matmul per layer: weights carry a leading member
dimension and each layer is a single `torch.baddbmm`, so e.g. BCQ-Lag's twin reward and twin cost
critics (4 networks) cost one pass instead of four.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from saferule_core.algos.functional import bind

# OSRL clamps the VAE's log-std to this range for numerical stability.
VAE_LOG_STD_RANGE: tuple[float, float] = (-4.0, 15.0)
# BCQ samples the VAE latent from N(0, 1) clipped to this box, keeping decoded actions near the data.
VAE_LATENT_CLIP: float = 0.5
GAUSSIAN_LOG_STD_RANGE: tuple[float, float] = (-20.0, 2.0)


class ReLU(nn.Module):
    """In-place ReLU. Safe right after a linear layer (whose backward never reads its output);
    saves allocating (and page-faulting) one activation tensor per layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(x)


class Tanh(nn.Module):
    """In-place tanh, for the same reason as `ReLU` (tanh's backward reads only its output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh_(x)


class StackableLinear(nn.Linear):
    """`nn.Linear` whose parameters may carry a leading model axis (K stacked models: weight
    [K, out, in], bias [K, out]); the input is then [K, B, in] and the K products are one batched
    matmul. With ordinary parameters it is exactly `nn.Linear` (same state dict, same export)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 2:
            return nn.functional.linear(x, self.weight, self.bias)
        return torch.baddbmm(self.bias.unsqueeze(-2), x, self.weight.transpose(-1, -2))


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int,
        activation: type[nn.Module] = ReLU,
        output_activation: type[nn.Module] | None = None) -> nn.Sequential:
    """Linear layers of sizes in_dim -> hidden... -> out_dim with `activation` after each hidden
    layer. Activations must only ever follow a linear layer (they may work in place)."""
    sizes = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(StackableLinear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    if output_activation is not None:
        layers.append(output_activation())
    return nn.Sequential(*layers)


# ----- bfloat16 inference with the activation fused into each matmul ------------------------------
# oneDNN applies the activation as a post-op of the matmul, so the hidden activations are written
# once instead of written, read and written again. No autograd: for target computations only.
_FUSED_ACTIVATIONS: dict[type[nn.Module], str] = {ReLU: "relu", Tanh: "tanh"}


def native_bf16_available() -> bool:
    """Whether this CPU computes bfloat16 matmuls in hardware (AVX-512 BF16 / AMX). Without it
    oneDNN emulates them, hundreds of times slower than float32 (measured: ~1 GFLOP/s on an
    AVX2-only EPYC), and its fused bfloat16 linear op refuses to run at all."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fused_inference_available(device: torch.device | str) -> bool:
    """Whether `fused_mlp_bf16` and friends can run here (CPU with native bfloat16 and oneDNN's
    fused linear op)."""
    return torch.device(device).type == "cpu" and hasattr(torch.ops.mkldnn, "_linear_pointwise") and \
        native_bf16_available()


def _fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str) -> torch.Tensor:
    """activation(x @ weight.T + bias) in bfloat16; weight [out, in]."""
    return torch.ops.mkldnn._linear_pointwise(x, weight.to(torch.bfloat16), bias.to(torch.bfloat16),
                                              activation, [], "")


def fused_mlp_bf16(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`net(x)` for an `mlp` (Linear layers, each optionally followed by ReLU/Tanh), in bfloat16."""
    layers = list(net)
    out = x.to(torch.bfloat16)
    i = 0
    while i < len(layers):
        linear = layers[i]
        assert isinstance(linear, nn.Linear), f"expected a Linear layer, got {type(linear).__name__}"
        following = type(layers[i + 1]) if i + 1 < len(layers) else None
        activation = _FUSED_ACTIVATIONS.get(following) if following is not None else None
        out = _fused_linear(out, linear.weight, linear.bias, activation or "none")
        i += 2 if activation else 1
    return out


class EnsembleLinear(nn.Module):
    """`members` independent linear layers computed by one batched matmul.

    Input [members, B, in] (or [B, in], shared by all members) -> output [members, B, out].
    Each member is initialised like `nn.Linear` (uniform in +-1/sqrt(in)).
    """

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.members = members
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))
        self.init_members()

    @torch.no_grad()
    def init_members(self, members: slice = slice(None), generator: torch.Generator | None = None) -> None:
        """Draw these members' weights afresh (uniform in +-1/sqrt(in), weight then bias)."""
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight[members].uniform_(-bound, bound, generator=generator)
        self.bias[members].uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        """Parameters may carry leading axes (K stacked models: weight [K, members, in, out]); x then
        has them too ([K, B, in] shared by the members, or [K, members, B, in]), and the K x members
        products are still one batched matmul."""
        weight: torch.Tensor = self.weight
        bias: torch.Tensor = self.bias
        if members is not None:
            weight, bias = weight[..., members, :, :], bias[..., members, :, :]
        lead, count = weight.shape[:-3], weight.shape[-3]
        if x.dim() == len(lead) + 2:
            x = x.unsqueeze(-3).expand(*lead, count, *x.shape[-2:])
        if not lead:
            return torch.baddbmm(bias, x, weight)
        out = torch.baddbmm(bias.reshape(-1, *bias.shape[-2:]), x.reshape(-1, *x.shape[-2:]),
                            weight.reshape(-1, *weight.shape[-2:]))
        return out.view(*lead, count, *out.shape[-2:])

    def extra_repr(self) -> str:
        return f"members={self.members}, in_features={self.in_features}, out_features={self.out_features}"


class EnsembleCritic(nn.Module):
    """Q(s, a) for `members` independent critics in one pass.

    forward(obs [B, obs_dim], act [B, act_dim]) -> [members, B]. `members=slice(...)` evaluates a
    subset (e.g. only the cost critics) without touching the others' weights. With stacked
    parameters (leading model axis K, see `EnsembleLinear`) obs and act are [K, B, ...] and the
    result [K, members, B].
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], members: int,
                 layer_norm: bool = False) -> None:
        super().__init__()
        self.members = members
        # Layer normalisation (no learned scale or shift) before each hidden ReLU bounds how far the
        # values of actions outside the data can grow, which is what diverges when targets bootstrap
        # from the critic's own best guesses.
        self.layer_norm = layer_norm
        sizes = [obs_dim + act_dim, *hidden, 1]
        self.layers = nn.ModuleList(EnsembleLinear(members, sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1))

    def ensemble_layers(self) -> list[EnsembleLinear]:
        return [layer for layer in self.layers if isinstance(layer, EnsembleLinear)]

    def forward(self, obs: torch.Tensor, act: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        h = torch.cat([obs, act], dim=-1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, members)
            if i < last:
                if self.layer_norm:
                    h = nn.functional.layer_norm(h, h.shape[-1:])
                h = torch.relu_(h)
        return h.squeeze(-1)

    def fused_forward_bf16(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """`forward` for every member in bfloat16 with fused ReLUs (no autograd), [members, B]; with
        layer normalisation the ReLU follows it, unfused."""
        x = torch.cat([obs, act], dim=-1).to(torch.bfloat16)
        # each layer's weights cast once for all members ([members, out, in], as the fused op wants)
        weights = [(layer.weight.transpose(1, 2).to(torch.bfloat16), layer.bias[:, 0].to(torch.bfloat16))
                   for layer in self.ensemble_layers()]
        last = len(weights) - 1
        values = []
        for member in range(self.members):
            h = x
            for i, (weight, bias) in enumerate(weights):
                hidden = i < last
                h = _fused_linear(h, weight[member], bias[member], "relu" if hidden and not self.layer_norm else "none")
                if hidden and self.layer_norm:
                    h = torch.relu_(nn.functional.layer_norm(h, h.shape[-1:]))
            values.append(h.squeeze(-1))
        return torch.stack(values)


class SquashedDeterministicActor(nn.Module):
    """a = tanh(MLP(s)): a deterministic policy in the unit box."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, act_dim, ReLU, Tanh)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class PerturbationActor(nn.Module):
    """BCQ's actor: nudges a behaviour action by at most `phi` per dimension, staying in [-1, 1].

    a' = clamp(a + phi * tanh(MLP([s, a])), -1, 1). Tanh hidden activations as in OSRL's BCQ-Lag.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], phi: float) -> None:
        super().__init__()
        self.phi = phi
        self.net = mlp(obs_dim + act_dim, hidden, act_dim, Tanh, Tanh)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return (act + self.phi * self.net(torch.cat([obs, act], dim=-1))).clamp(-1.0, 1.0)

    def fused_forward_bf16(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """`forward` in bfloat16 with fused activations (no autograd)."""
        act = act.to(torch.bfloat16)
        return (act + self.phi * fused_mlp_bf16(self.net, torch.cat([obs.to(torch.bfloat16), act], dim=-1))
                ).clamp(-1.0, 1.0)


class SquashedGaussianActor(nn.Module):
    """tanh(N(mu(s), sigma(s))): a stochastic policy in the unit box; tanh(mu) when deterministic."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.trunk = mlp(obs_dim, hidden[:-1], hidden[-1], ReLU, ReLU)
        self.mean = nn.Linear(hidden[-1], act_dim)
        self.log_std = nn.Linear(hidden[-1], act_dim)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the pre-tanh Gaussian."""
        h = self.trunk(obs)
        log_std = self.log_std(h).clamp(*GAUSSIAN_LOG_STD_RANGE)
        return self.mean(h), log_std.exp()

    def sample(self, obs: torch.Tensor, num_samples: int | None = None,
               eps: torch.Tensor | None = None) -> torch.Tensor:
        """Reparameterised squashed samples: [B, act_dim], or [num_samples, B, act_dim]; `eps` is the
        standard normal draw of that shape (drawn here if None)."""
        mean, std = self.distribution(obs)
        if eps is None:
            shape = mean.shape if num_samples is None else (num_samples, *mean.shape)
            eps = torch.randn(shape, device=mean.device)
        return torch.tanh(mean.float() + std.float() * eps)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action tanh(mu(s))."""
        h = self.trunk(obs)
        return torch.tanh(self.mean(h))


class ConditionalVAE(nn.Module):
    """Behaviour model p(a | s): encoder q(z | s, a), decoder a = tanh(D(s, z)).

    Two hidden layers of `hidden` units in each half, latent size 2 * act_dim (as in BCQ/OSRL).
    `decode(obs)` with z = 0 is the deterministic "most typical" action; `decode_sampled` draws
    z ~ N(0, 1) clipped to [-0.5, 0.5] as BCQ does.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, latent_dim: int | None = None) -> None:
        super().__init__()
        self.latent_dim = latent_dim or 2 * act_dim
        self.encoder = mlp(obs_dim + act_dim, [hidden], hidden, ReLU, ReLU)
        self.latent_mean = StackableLinear(hidden, self.latent_dim)
        self.latent_log_std = StackableLinear(hidden, self.latent_dim)
        self.decoder = mlp(obs_dim + self.latent_dim, [hidden, hidden], act_dim, ReLU, Tanh)

    def encode(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([obs, act], dim=-1))
        return self.latent_mean(h), self.latent_log_std(h).clamp(*VAE_LOG_STD_RANGE).exp()

    def decode(self, obs: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:
            z = obs.new_zeros(obs.shape[:-1] + (self.latent_dim,))
        return self.decoder(torch.cat([obs, z], dim=-1))

    def sample_latent(self, rows: int, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """BCQ's latent draw for `rows` decodes: N(0, 1) clipped to +-VAE_LATENT_CLIP."""
        z = torch.randn(rows, self.latent_dim, dtype=like.dtype, device=like.device, generator=generator)
        return z.clamp(-VAE_LATENT_CLIP, VAE_LATENT_CLIP)

    def decode_sampled(self, obs: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Decode a latent drawn by `sample_latent` (drawn here unless given)."""
        return self.decode(obs, self.sample_latent(obs.shape[0], obs) if z is None else z)

    def fused_decode_sampled_bf16(self, obs: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """`decode_sampled` in bfloat16 with fused activations (no autograd; same latent draw)."""
        z = self.sample_latent(obs.shape[0], obs) if z is None else z
        return fused_mlp_bf16(self.decoder, torch.cat([obs, z], dim=-1))

    def forward(self, obs: torch.Tensor, act: torch.Tensor,
                eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, latent mean and latent std for a batch of (s, a); `eps` is the standard
        normal draw of the reparameterised latent (drawn here unless given)."""
        mean, std = self.encode(obs, act)
        z = mean + std * (torch.randn_like(std) if eps is None else eps)
        return self.decode(obs, z), mean, std


def latent_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std) || N(0, 1)) averaged over latent dims: one value per row."""
    return -0.5 * (1.0 + 2.0 * torch.log(std) - mean.pow(2) - std.pow(2)).mean(dim=-1)


def vae_loss(vae: nn.Module, obs: torch.Tensor, act: torch.Tensor, beta: float,
             eps: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruction MSE + beta * KL (both averaged over the batch), as in BCQ/OSRL. `vae` is a
    `ConditionalVAE` (or a functional view of one, see `algos.stacked.bind`); with stacked
    parameters and [K, B, ...] inputs the loss is [K]."""
    recon, mean, std = vae(obs, act, eps)
    recon_loss = (recon.float() - act).pow(2).mean(dim=(-2, -1))
    return recon_loss + beta * latent_kl(mean.float(), std.float()).mean(dim=-1)


class BCQPolicyCore(nn.Module):
    """BCQ-Lag's deterministic policy: perturb the VAE's z = 0 action. Normalised obs -> unit box."""

    def __init__(self, vae: ConditionalVAE, actor: PerturbationActor) -> None:
        super().__init__()
        self.vae = vae
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs, self.vae.decode(obs))


# A candidate over its cost budget scores below every candidate within it (values are O(1e3) at most).
INFEASIBLE_SCORE: float = -1e6


def constrained_choice_scores(q_reward: torch.Tensor, q_cost: torch.Tensor, cost_threshold: float) -> torch.Tensor:
    """Scores whose argmax (over the candidate axis) is the candidate with the highest reward value
    among those whose cost value is within `cost_threshold`, or, where none is, the one with the
    lowest cost value."""
    return torch.where(q_cost <= cost_threshold, q_reward, INFEASIBLE_SCORE - q_cost)


def deploy_latents(count: int, latent_dim: int) -> torch.Tensor:
    """The fixed latents [count, latent_dim] a selecting policy decodes its candidates from: z = 0
    first, the rest drawn once (seed 0) as BCQ draws them, so the deployed policy is deterministic."""
    generator = torch.Generator().manual_seed(0)
    rest = torch.randn(count - 1, latent_dim, generator=generator).clamp(-VAE_LATENT_CLIP, VAE_LATENT_CLIP)
    return torch.cat([torch.zeros(1, latent_dim), rest])


def _in_float64(module: nn.Module, method: str = "forward") -> Callable[..., torch.Tensor]:
    """`module.<method>` computed in float64 from float64 casts of its parameters (gradients reach
    the float32 parameters through the casts)."""
    params = {name: p.double() for name, p in module.named_parameters()}

    def call(*inputs: torch.Tensor) -> torch.Tensor:
        return bind(module, params, method)(*(x.double() for x in inputs))

    return call


class BCQSelectingPolicyCore(nn.Module):

    """BCQ-Lag's constrained selecting policy: decode one candidate per fixed latent, perturb each
    with the actor, score them with the critics (a twin pair's min, or with `pessimistic_cost` the
    cost pair's max) and take the best by `constrained_choice_scores`.

    Computed in float64: a choice between candidates whose scores differ by float32 rounding would
    otherwise differ between torch and ONNX Runtime (whose matmuls sum in other orders), and the
    exported policy must act as the checked one does. The choice is made without gradients;
    gradients reach the actor through the chosen candidate."""

    latents: torch.Tensor

    def __init__(self, vae: ConditionalVAE, actor: PerturbationActor, critics: EnsembleCritic,
                 reward_members: slice, cost_members: slice, cost_threshold: float, candidates: int,
                 pessimistic_cost: bool = False) -> None:
        super().__init__()
        self.vae, self.actor, self.critics = vae, actor, critics
        self.reward_members, self.cost_members = reward_members, cost_members
        self.cost_threshold = cost_threshold
        self.pessimistic_cost = pessimistic_cost
        self.register_buffer("latents", deploy_latents(candidates, vae.latent_dim).double())

    def scored_candidates(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float64 candidates [B, N, act] (gradients reach the actor) and their reward and cost
        values [B, N] (no gradients), for normalised observations [B, obs]."""
        batch, count = obs.shape[0], self.latents.shape[0]
        obs_rep = obs.double().unsqueeze(1).expand(batch, count, obs.shape[-1]).reshape(batch * count, -1)
        latents = self.latents.unsqueeze(0).expand(batch, count, self.latents.shape[-1]).reshape(batch * count, -1)
        with torch.no_grad():
            base = _in_float64(self.vae, "decode")(obs_rep, latents)
        candidates = _in_float64(self.actor)(obs_rep, base)                       # [B*N, act]
        with torch.no_grad():
            q = _in_float64(self.critics)(obs_rep, candidates.detach())             # [members, B*N]
            costs = q[self.cost_members]
            cost = costs.max(dim=0).values if self.pessimistic_cost else costs.min(dim=0).values
            reward = q[self.reward_members].min(dim=0).values
        return candidates.view(batch, count, -1), reward.view(batch, count), cost.view(batch, count)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        candidates, reward, cost = self.scored_candidates(obs)
        with torch.no_grad():
            choice = constrained_choice_scores(reward, cost, self.cost_threshold).argmax(dim=1)   # [B]
        index = choice.view(-1, 1, 1).expand(-1, 1, candidates.shape[-1])
        return torch.gather(candidates, 1, index).squeeze(1).to(obs.dtype)


class DeployablePolicy(nn.Module):

    """Raw observations float32 [B, obs_dim] -> env actions float32 [B, act_dim].

    Normalises observations, runs the policy core (unit-box actions) and rescales to the env's
    action bounds, all as plain tensor ops (exportable to ONNX). Deterministic; gradients off.
    """

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    action_low: torch.Tensor
    action_high: torch.Tensor

    def __init__(self, core: nn.Module, obs_mean: torch.Tensor, obs_std: torch.Tensor,
                 action_low: torch.Tensor, action_high: torch.Tensor) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("obs_mean", obs_mean.detach().clone().float())
        self.register_buffer("obs_std", obs_std.detach().clone().float())
        self.register_buffer("action_low", action_low.detach().clone().float())
        self.register_buffer("action_high", action_high.detach().clone().float())
        self.eval()
        self.requires_grad_(False)

    def unit_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions in [-1, 1] (the networks' own action space)."""
        return self.core((obs - self.obs_mean) / self.obs_std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        unit = self.unit_actions(obs)
        # center + unit * half-range: exactly `unit` for the unit box.
        return 0.5 * (self.action_high + self.action_low) + unit * (0.5 * (self.action_high - self.action_low))
