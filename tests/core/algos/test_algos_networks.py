from __future__ import annotations

import copy

import pytest
import torch

from saferule_core.algos.batch import BatchSampler
from saferule_core.algos.bcq_lag import BCQLag
from saferule_core.algos.networks import (
    VAE_LATENT_CLIP,
    BCQPolicyCore,
    BCQSelectingPolicyCore,
    ConditionalVAE,
    DeployablePolicy,
    EnsembleCritic,
    EnsembleLinear,
    PerturbationActor,
    SquashedDeterministicActor,
    SquashedGaussianActor,
    constrained_choice_scores,
    deploy_latents,
    fused_inference_available,
    mlp,
    native_bf16_available,
)
from saferule_core.algos.registry import make_config


def test_ensemble_linear_equals_separate_linear_layers() -> None:
    torch.manual_seed(0)
    layer = EnsembleLinear(members=3, in_features=5, out_features=4)
    x = torch.randn(7, 5)
    out = layer(x)
    assert out.shape == (3, 7, 4)
    for m in range(3):
        expected = x @ layer.weight[m] + layer.bias[m]
        torch.testing.assert_close(out[m], expected)
    # Per-member inputs and member subsets use the same weights.
    xs = torch.randn(3, 7, 5)
    torch.testing.assert_close(layer(xs)[1], xs[1] @ layer.weight[1] + layer.bias[1])
    torch.testing.assert_close(layer(x, members=slice(1, 3)), out[1:3])


def test_ensemble_critic_members_are_independent_networks() -> None:
    torch.manual_seed(0)
    critic = EnsembleCritic(obs_dim=6, act_dim=2, hidden=[16, 16], members=4)
    obs, act = torch.randn(10, 6), torch.randn(10, 2)
    q = critic(obs, act)
    assert q.shape == (4, 10)
    assert not torch.allclose(q[0], q[1])
    torch.testing.assert_close(critic(obs, act, members=slice(2, 4)), q[2:4])
    # The gradient of member 0's output touches only member 0's weights.
    q[0].sum().backward()
    grad = critic.layers[0].weight.grad
    assert grad is not None and grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0


@pytest.mark.parametrize("layer_norm", [False, True])
def test_ensemble_critic_with_stacked_parameters_is_each_models_critic(layer_norm: bool) -> None:
    # K critics' parameters stacked on a leading axis: one call gives [K, members, B], model k's
    # values exactly those of critic k on its own inputs
    torch.manual_seed(0)
    critics = [EnsembleCritic(5, 2, (16, 16), members=4, layer_norm=layer_norm) for _ in range(3)]
    stacked = {name: torch.stack([dict(c.named_parameters())[name] for c in critics])
               for name, _ in critics[0].named_parameters()}
    obs, act = torch.randn(3, 10, 5), torch.randn(3, 10, 2)
    values = torch.func.functional_call(critics[0], stacked, (obs, act))
    assert values.shape == (3, 4, 10)
    cost_only = torch.func.functional_call(critics[0], stacked, (obs, act, slice(2, 4)))
    for k, critic in enumerate(critics):
        torch.testing.assert_close(values[k], critic(obs[k], act[k]))
        torch.testing.assert_close(cost_only[k], critic(obs[k], act[k])[2:])


def test_layer_normalised_critic_values_stay_bounded_far_from_the_data() -> None:
    """With layer norm the last hidden layer has unit scale whatever the input, so |Q| is at most
    |w|_2 * sqrt(width) + |b| per member; without it Q grows with the input's size."""
    torch.manual_seed(0)
    plain = EnsembleCritic(obs_dim=6, act_dim=2, hidden=[16, 16], members=2)
    normed = EnsembleCritic(obs_dim=6, act_dim=2, hidden=[16, 16], members=2, layer_norm=True)
    normed.load_state_dict(plain.state_dict())
    obs, act = torch.randn(50, 6), torch.randn(50, 2)
    last = normed.layers[-1]
    bound = last.weight.squeeze(-1).norm(dim=-1) * 16 ** 0.5 + last.bias.squeeze(-1).squeeze(-1).abs()
    for scale in (1.0, 1e3):
        with torch.no_grad():
            q = normed(obs * scale, act * scale)
        assert (q.abs() <= bound.unsqueeze(-1) + 1e-4).all()
    with torch.no_grad():
        assert plain(obs * 1e3, act * 1e3).abs().max() > 10 * bound.max()


def test_mlp_shapes_and_output_activation() -> None:
    net = mlp(3, [8, 8], 2, output_activation=torch.nn.Tanh)
    out = net(torch.randn(5, 3) * 100)
    assert out.shape == (5, 2) and out.abs().max() <= 1.0


def test_actors_stay_in_the_unit_box() -> None:
    torch.manual_seed(0)
    obs = torch.randn(50, 6) * 10
    assert SquashedDeterministicActor(6, 2, [16]).forward(obs).abs().max() <= 1.0
    gaussian = SquashedGaussianActor(6, 2, [16, 16])
    assert gaussian(obs).abs().max() <= 1.0
    samples = gaussian.sample(obs, num_samples=3)
    assert samples.shape == (3, 50, 2) and samples.abs().max() <= 1.0


def test_perturbation_is_bounded_by_phi() -> None:
    torch.manual_seed(0)
    actor = PerturbationActor(6, 2, [16, 16], phi=0.05)
    obs, act = torch.randn(100, 6), torch.rand(100, 2) * 1.6 - 0.8
    moved = actor(obs, act)
    assert (moved - act).abs().max() <= 0.05 + 1e-6
    at_edge = actor(obs, torch.ones(100, 2))
    assert at_edge.max() <= 1.0


def test_vae_decode_is_deterministic_at_z_zero_and_sampled_latents_are_clipped() -> None:
    torch.manual_seed(0)
    vae = ConditionalVAE(6, 2, hidden=16)
    assert vae.latent_dim == 4
    obs = torch.randn(20, 6)
    torch.testing.assert_close(vae.decode(obs), vae.decode(obs))
    torch.testing.assert_close(vae.decode(obs), vae.decode(obs, torch.zeros(20, 4)))
    z = vae.sample_latent(10_000, obs)
    assert z.abs().max() <= VAE_LATENT_CLIP and z.std() > 0.2
    recon, mean, std = vae(obs, torch.rand(20, 2))
    assert recon.shape == (20, 2) and mean.shape == std.shape == (20, 4) and (std > 0).all()


def test_deployable_policy_normalises_and_rescales() -> None:
    torch.manual_seed(0)
    core = SquashedDeterministicActor(3, 2, [8])
    mean, std = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 1.0])
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 10.0])
    policy = DeployablePolicy(core, mean, std, low, high)
    obs = torch.randn(9, 3) * 4
    unit = core((obs - mean) / std)
    torch.testing.assert_close(policy.unit_actions(obs), unit)
    torch.testing.assert_close(policy(obs), low + (unit + 1) * 0.5 * (high - low))
    assert not any(p.requires_grad for p in policy.parameters())


def test_bcq_policy_core_uses_the_deterministic_decoder() -> None:
    torch.manual_seed(0)
    vae, actor = ConditionalVAE(4, 2, 16), PerturbationActor(4, 2, [16], phi=0.05)
    obs = torch.randn(8, 4)
    torch.testing.assert_close(BCQPolicyCore(vae, actor)(obs), actor(obs, vae.decode(obs)))


@pytest.mark.skipif(not native_bf16_available(), reason="this CPU has no native bfloat16 (AVX-512 BF16 or AMX): "
                                                         "oneDNN's fused bfloat16 linear op does not run here")
def test_fused_bf16_inference_matches_autocast_forward() -> None:
    assert fused_inference_available("cpu")       # the pinned torch has oneDNN's fused linear op
    torch.manual_seed(0)
    obs, act = torch.randn(300, 5), torch.rand(300, 2) * 2 - 1
    vae, actor = ConditionalVAE(5, 2, 64), PerturbationActor(5, 2, (32, 32), phi=0.5)
    critic = EnsembleCritic(5, 2, (32, 32), members=4)
    normed = EnsembleCritic(5, 2, (32, 32), members=4, layer_norm=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        decoded = vae.decode_sampled(obs).float()
        perturbed = actor(obs, act).float()
        values = critic(obs, act).float()
        normed_values = normed(obs, act).float()
    with torch.no_grad():
        torch.manual_seed(1)                      # the same latent draw
        fused_decoded = vae.fused_decode_sampled_bf16(obs).float()
        fused_perturbed = actor.fused_forward_bf16(obs, act).float()
        fused_values = critic.fused_forward_bf16(obs, act).float()
        fused_normed = normed.fused_forward_bf16(obs, act).float()
    assert fused_values.shape == values.shape == fused_normed.shape == (4, 300)
    torch.testing.assert_close(fused_normed, normed_values, atol=0.03, rtol=0.03)
    # both are bfloat16 matmuls with float accumulation: equal up to bfloat16 rounding
    torch.testing.assert_close(fused_decoded, decoded, atol=0.02, rtol=0.02)
    torch.testing.assert_close(fused_perturbed, perturbed, atol=0.02, rtol=0.02)
    torch.testing.assert_close(fused_values, values, atol=0.02, rtol=0.02)
    with torch.no_grad():                         # and not trivially: another latent draw differs
        assert not torch.allclose(vae.fused_decode_sampled_bf16(obs).float(), fused_decoded, atol=0.02)


def test_bcq_lag_fuses_its_targets_only_in_bf16(random_dataset, tiny) -> None:  # type: ignore[no-untyped-def]
    dataset = random_dataset()
    fp32 = BCQLag.from_dataset(dataset, make_config("bcq_lag", tiny["bcq_lag"]))
    bf16 = BCQLag.from_dataset(dataset, make_config("bcq_lag", {**tiny["bcq_lag"], "precision": "bf16"}))
    off = BCQLag.from_dataset(dataset, make_config("bcq_lag", {**tiny["bcq_lag"], "precision": "bf16",
                                                               "fused_targets": False}))
    # fused only where the CPU has native bfloat16 (elsewhere the fused op cannot run)
    assert (fp32._fused_targets, bf16._fused_targets, off._fused_targets) == (False, native_bf16_available(), False)
    batch = BatchSampler(dataset, bf16.info.stats, 64, seed=0).sample()
    off.load_state_dict(bf16.state_dict())
    latents = bf16.draw_noise(64, torch.Generator().manual_seed(3))["latents"]

    def targets(learner: BCQLag) -> torch.Tensor:
        p = learner.own_state().params
        return learner._critic_targets_impl(p["vae"], p["actor_target"], p["critics_target"], batch.observations,
                                            batch.next_observations, batch.rewards, batch.costs, batch.terminals,
                                            latents)[0]

    torch.testing.assert_close(targets(bf16), targets(off), atol=0.05, rtol=0.02)
    for _ in range(3):
        assert all(torch.isfinite(v) for v in bf16.update(BatchSampler(dataset, bf16.info.stats, 64).sample()).values())


def test_constrained_choice_takes_the_best_reward_within_budget_else_the_least_cost() -> None:
    q_reward = torch.tensor([[5.0, 3.0, 9.0, 1.0], [5.0, 3.0, 9.0, 1.0]])
    q_cost = torch.tensor([[1.0, 0.5, 7.0, 0.0], [8.0, 7.5, 9.0, 6.5]])
    choice = constrained_choice_scores(q_reward, q_cost, cost_threshold=6.34).argmax(dim=1)
    # row 0: 9.0 is over budget, 5.0 is the best within it; row 1: nothing within, least cost 6.5
    assert choice.tolist() == [0, 3]


def test_deploy_latents_are_fixed_start_at_zero_and_stay_in_the_clip_box() -> None:
    latents = deploy_latents(10, 4)
    torch.testing.assert_close(latents, deploy_latents(10, 4))
    assert latents.shape == (10, 4)
    assert torch.all(latents[0] == 0) and latents.abs().max() <= VAE_LATENT_CLIP
    assert len({tuple(row.tolist()) for row in latents}) == 10


def test_selecting_core_picks_the_scored_candidate_and_trains_only_the_actor() -> None:
    torch.manual_seed(0)
    vae, actor = ConditionalVAE(4, 2, 16), PerturbationActor(4, 2, [16], phi=0.3)
    critics = EnsembleCritic(4, 2, [16], members=4)
    core = BCQSelectingPolicyCore(vae, actor, critics, slice(0, 2), slice(2, 4), cost_threshold=0.0, candidates=6)
    obs = torch.randn(5, 4)
    actions = core(obs)
    # the same choice written out row by row (the core computes in float64)
    vae64, actor64, critics64 = (copy.deepcopy(m).double() for m in (vae, actor, critics))
    for row in range(5):
        rep = obs[row:row + 1].double().expand(6, 4)
        with torch.no_grad():
            candidates = actor64(rep, vae64.decode(rep, core.latents))
            q = critics64(rep, candidates)
        scores = constrained_choice_scores(q[0:2].min(dim=0).values, q[2:4].min(dim=0).values, 0.0)
        torch.testing.assert_close(actions[row].detach(), candidates[scores.argmax()].float())
    assert actions.dtype == torch.float32
    actions.sum().backward()
    assert all(p.grad is not None for p in actor.parameters())
    assert all(p.grad is None for p in [*vae.parameters(), *critics.parameters()])
