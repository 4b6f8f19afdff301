"""Latent inpainting (Yeh et al. 2016) of the GAN and the AAE, on generators whose range is known:
a generator that reproduces each of four prototypes exactly recovers the missing half of a
prototype from its observed half, far better than mean fill and than the same optimisation with
the contextual loss switched off. (The protocol checks shared by every imputing family are in
test_impute_chains.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import genmodels
from genmodels.impute_chains import context_weights, neighbourhood_weights, optimise_latents

D, K = 16, 4
PROTOS = torch.tensor(
    [
        [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0],
        [0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1],
        [1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1],
    ],
    dtype=torch.float32,
)
MASK = torch.cat([torch.ones(8), torch.zeros(8)])  # the first half observed


class Prototypes(nn.Module):
    """z (N, K) -> logits (N, D): a softmax blend of four prototypes, sharpened; a one-hot-ish
    z reproduces a prototype exactly (after thresholding), so every prototype is in range."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(12.0))  # the sharpness; the models read a weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.weight * (torch.softmax(3.0 * z, dim=1) @ (2 * PROTOS - 1))


def model_with_prototypes(name: str) -> genmodels.GenerativeModel:
    torch.manual_seed(0)
    if name == "gan":
        model = genmodels.build("gan", (D,), latent_dim=K, hidden_size=8, impute_output="mode")
        model.generator = nn.Sequential(Prototypes())
    else:
        model = genmodels.build("aae", (D,), latent_dim=K, hidden_sizes=(8,), impute_output="mode")
        model.decoder = nn.Sequential(Prototypes())
    return model.eval()


def missing_error(samples: torch.Tensor, truth: torch.Tensor) -> float:
    """Hamming error on the missing half, averaged over imputations and examples."""
    return float((samples[..., 8:] != truth[:, 8:]).float().mean())


@pytest.mark.parametrize("name", ["gan", "aae"])
def test_inpainting_recovers_what_the_generator_can_produce(name):
    model = model_with_prototypes(name)
    x = PROTOS.repeat(2, 1)  # 8 examples
    out = model.impute(x, MASK.expand_as(x), torch.Generator().manual_seed(0), num_samples=4)
    assert out.log_prob_missing is None
    error = missing_error(out.samples, x)
    mean_fill = (PROTOS.mean(0) > 0.5).float().expand_as(x)
    assert missing_error(mean_fill[None], x) >= 0.3
    # the control: the same restarts and steps with the contextual loss switched off
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(len(x), K, generator=g)
    steps, lr = model.config.impute_steps, model.config.impute_lr
    if name == "gan":

        def loss(z):
            return model.inpainting_loss(z, x, MASK.expand_as(x), g, context=False)

        z = optimise_latents(loss, z0, steps, lr)
    else:
        z = optimise_latents(
            lambda z: model.inpainting_loss(z, x, MASK.expand_as(x), context=False), z0, steps, lr
        )
    control = (model_logits(model, z) > 0).float()
    assert error <= 0.05 and missing_error(control[None], x) >= error + 0.25, (error, control)


def model_logits(model, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generator(z) if model.family == "gan" else model.decoder(z)


@pytest.mark.parametrize("name", ["gan", "aae"])
def test_inpainting_touches_only_the_codes(name):
    """On the real networks (the GAN's generator has BatchNorm, left in train mode here)."""
    torch.manual_seed(0)
    cfg = {"latent_dim": 4, "hidden_size": 8} if name == "gan" else {"latent_dim": 2}
    model = genmodels.build(name, (D,), impute_steps=5, **cfg).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = PROTOS.repeat(2, 1)
    a = model.impute(x, MASK.expand_as(x), torch.Generator().manual_seed(1), num_samples=2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    b = model.impute(x, MASK.expand_as(x), torch.Generator().manual_seed(1), num_samples=2)
    assert torch.equal(a.samples, b.samples)
    assert f"adam-steps=5-lr={model.config.impute_lr}" in a.method


def test_gan_eight_bit_mode_bins_the_generator_output():
    torch.manual_seed(0)
    model = genmodels.build("gan", (1, 3, 4), levels=4, latent_dim=4, channels=4, impute_steps=3)
    x = torch.randint(0, 4, (3, 1, 3, 4)).float()
    mask = (torch.arange(12) < 6).float().view(1, 3, 4).expand_as(x)
    out = model.impute(x, mask, torch.Generator().manual_seed(0), num_samples=2)
    assert set(out.samples.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert torch.equal(out.samples * mask, (x * mask).expand_as(out.samples))
    assert "bin-floor" in out.method


def test_neighbourhood_weights_follow_yeh():
    mask = torch.ones(1, 1, 5, 5)
    mask[..., 2, 2] = 0  # one missing pixel in the middle
    w = neighbourhood_weights(mask, 3)
    assert w[0, 0, 2, 2] == 0  # missing pixels carry no weight
    assert torch.isclose(w[0, 0, 1, 1], torch.tensor(1 / 9))  # its 3x3 window holds 1 of 9
    assert w[0, 0, 0, 0] == 0  # nothing missing nearby
    assert torch.isclose(w[0, 0, 2, 3], torch.tensor(1 / 9))
    flat = context_weights(mask.flatten(1), (1, 5, 5), 0)
    assert torch.equal(flat, mask.flatten(1))  # window 0: every observed pixel counts 1
    assert torch.equal(context_weights(mask.flatten(1), (1, 5, 5), 3), w.flatten(1))
