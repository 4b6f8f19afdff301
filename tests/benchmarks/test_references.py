"""The throughput benchmark's references (``benchmarks/reference/``) compute the same model as the
families they are timed against: loaded with a family model's weights, each gives the same loss
and the same gradients on the same batch and noise (within 1e-5 relative, float64 or, where
the family's forward casts to float32, float32); control: one weight of
the reference changed gives a different loss."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import genmodels

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from reference import load_from
from reference.dbm import ReferenceDBM
from reference.fvsbn import ReferenceFVSBN
from reference.made import ReferenceMADE, masks_of
from reference.nade import ReferenceNADE
from reference.pixelcnn import ReferencePixelCNN
from reference.rbm import ReferenceRBM
from reference.realnvp import ReferenceRealNVP
from reference.vae import ReferenceVAE

SHAPE = (1, 8, 8)
D = 64


def binary_batch(n: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, *SHAPE, generator=g) < 0.4).double()


def jiggle(model: torch.nn.Module, scale: float = 0.3) -> None:
    """Move every parameter away from its initialisation (zero biases, near-identity flows)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def family_and_reference(name: str):
    """(family model, reference with its weights, batch, the family's loss function)."""
    x = binary_batch()
    if name == "nade":
        ours = genmodels.build("nade", SHAPE, 2, hidden_size=16)
        ref = ReferenceNADE(D, 16)
    elif name == "nade-relu":
        ours = genmodels.build("nade", SHAPE, 2, hidden_size=16, activation="relu")
        ref = ReferenceNADE(D, 16, "relu")
    elif name == "made":
        ours = genmodels.build("made", SHAPE, 2, hidden_sizes=(20, 12))
        ref = ReferenceMADE(masks_of(ours))
    elif name == "fvsbn":
        ours = genmodels.build("fvsbn", SHAPE, 2)
        ref = ReferenceFVSBN(D)
    elif name == "pixelcnn":
        ours = genmodels.build("pixelcnn", SHAPE, 2, channels=8, num_layers=2)
        ref = ReferencePixelCNN(8, 2)
    elif name == "vae":
        ours = genmodels.build("vae", SHAPE, 2, latent_dim=4, hidden_sizes=(16, 8))
        ref = ReferenceVAE(D, (16, 8), 4)
    elif name == "realnvp":
        x = torch.randint(0, 256, (12, 1, 8, 8)).double()
        cfg = {"hidden_channels": 8, "num_coupling": 2, "num_res_blocks": 1}
        ours = genmodels.build("realnvp", SHAPE, 256, **cfg)
        ref = ReferenceRealNVP(SHAPE, 256, 2, 2, 8, 1)
    elif name == "rbm":
        ours = genmodels.build(
            "rbm", SHAPE, 2, hidden_size=10, num_chains=7, cd_k=3, chain_restart=0.0
        )
        ours.set_base_rates(x)
        ref = ReferenceRBM(D, 10, chains=7, k=3)
    elif name == "dbm":
        ours = genmodels.build(  # no chain restarts: the reference has none (their own test)
            "dbm", SHAPE, 2, hidden_sizes=(10, 6), num_chains=7, gibbs_steps=3, chain_restart=0.0
        )
        ref = ReferenceDBM(D, 10, 6, chains=7, gibbs=3, mean_field=10)
    else:
        raise ValueError(name)
    # float64 where the family's forward keeps the batch's dtype; MADE, FVSBN and PixelCNN
    # cast the batch to float32, so they are compared in float32
    dtype = torch.float32 if name in ("made", "fvsbn", "pixelcnn") else torch.float64
    ours, x = ours.to(dtype), x.to(dtype)
    jiggle(ours)
    ours.train()
    if name in ("dbm", "realnvp"):  # the first training forward sets the base rate and starts
        with torch.no_grad():  # the chains (DBM) or initialises ActNorm from the batch (Real NVP)
            ours({"x": x})
    if name == "dbm":
        ref.chains = tuple(c.clone() for c in ours._chains)
    ref = load_from(ref.to(dtype), ours)
    if name == "dbm":
        ref.generator.set_state(ours._generator().get_state())
    if name == "rbm":
        ours.chains = None  # both start their chains from the base rates, same draws
    return ours, ref, x


def losses(ours, ref, x) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    mine = ours({"x": x})["loss"]
    torch.manual_seed(5)
    theirs = ref.loss(x)
    return mine, theirs


FAMILIES = ["nade", "nade-relu", "made", "fvsbn", "pixelcnn", "vae", "realnvp", "rbm", "dbm"]


@pytest.mark.parametrize("name", FAMILIES)
def test_reference_computes_the_family_loss_and_gradients(name):
    ours, ref, x = family_and_reference(name)
    mine, theirs = losses(ours, ref, x)
    assert abs(mine.item()) > 1e-3  # not a trivially zero loss
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    mine.backward()
    theirs.backward()
    ours_params = dict(ours.named_parameters())
    # float32 families: summation order differs between the two (seen: 2e-7 on a 1e-4 gradient)
    atol = 1e-6 if mine.dtype == torch.float32 else 1e-7
    for pname, p in ref.named_parameters():
        torch.testing.assert_close(ours_params[pname].grad, p.grad, rtol=1e-5, atol=atol)
    # control: one weight of the reference moved, the loss moves
    ours, ref, x = family_and_reference(name)
    with torch.no_grad():
        w = max(ref.parameters(), key=lambda p: p.numel())
        w.view(-1)[0] += 1.0
        w.view(-1)[w.numel() // 2] += 1.0
    mine, theirs = losses(ours, ref, x)
    assert not torch.allclose(mine, theirs, rtol=1e-5, atol=1e-5)
