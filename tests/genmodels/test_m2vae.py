"""M2: the unlabelled loss is the per-class ELBOs weighted by q(y|x) plus the entropy, the
labelled loss adds alpha x cross-entropy, the importance-weighted estimate with y enumerated
matches log p(x) computed by quadrature over a 1-d latent, conditional samples follow p(x|y),
and a few labels on a toy set give a classifier far above chance (uninformative labels do not)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels.m2vae import M2VAE
from tests.genmodels.checks import binary_states, is_a_shift


def build(d: int = 6, seed: int = 0, **config) -> M2VAE:
    torch.manual_seed(seed)
    tiny = {"num_classes": 3, "latent_dim": 2, "hidden_sizes": (8,)}
    return genmodels.build("m2vae", input_shape=(d,), **{**tiny, **config})


def binary(n: int, d: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, d), 0.4), generator=torch.Generator().manual_seed(seed))


def normal_log_density(v: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (math.log(2 * math.pi) + logvar + (v - mean) ** 2 / logvar.exp())).sum(-1)


def elbo_by_hand(
    model: M2VAE,
    x: torch.Tensor,
    c: int,
    eps: torch.Tensor,
    a: torch.Tensor | None = None,
    log_qa: torch.Tensor | None = None,
    aux_terms: bool = True,
) -> torch.Tensor:
    """ELBO(x, y=c) ``(B,)`` written out: Bernoulli log-likelihood, Gaussian KL, log p(y); with
    ADGM's draw ``a`` of q(a | x) (log-density ``log_qa``), q(z | a, x, y) and the terms
    log p(a | x, y, z) - log q(a | x) (left out with ``aux_terms=False``: a broken control)."""
    k, zdim = model.config.num_classes, model.config.latent_dim
    onehot = torch.zeros(len(x), k)
    onehot[:, c] = 1
    h = model.encoder(torch.cat([x, onehot] if a is None else [x, a, onehot], 1))
    mu, logvar = h[:, :zdim], h[:, zdim:].clamp(-12, 8)
    z = mu + eps * torch.exp(logvar / 2)
    logits = model.decoder(torch.cat([z, onehot], 1))
    log_lik = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(1)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    elbo = log_lik - kl + math.log(1 / k)
    if a is not None and aux_terms:
        mean, lv = model.aux_decoder(torch.cat([x, onehot, z], 1)).chunk(2, 1)
        elbo = elbo + normal_log_density(a, mean, lv.clamp(-12, 8)) - log_qa
    return elbo


def test_unlabelled_loss_is_the_q_weighted_sum_of_per_class_elbos_plus_entropy():
    model = strong(build(), seed=3)
    x = binary(5)
    torch.manual_seed(7)
    loss = model({"x": x, "y": torch.full((5,), -1)})["loss"]
    torch.manual_seed(7)
    eps = torch.randn(3, 5, 2)  # the forward's noise: (K, B_unlabelled, Z)
    elbos = torch.stack([elbo_by_hand(model, x, c, eps[c]) for c in range(3)], 1)
    log_q = model.classifier(x).log_softmax(1)
    q = log_q.exp()
    u = (q * elbos).sum(1) - (q * log_q).sum(1)  # sum_y q ELBO + H(q)
    assert loss.item() == pytest.approx(-u.mean().item(), rel=1e-5)
    # Controls: the entropy left out, or the classes weighted uniformly, give other values.
    assert abs(loss.item() + (q * elbos).sum(1).mean().item()) > 1e-2
    assert abs(loss.item() + (elbos.mean(1) - (q * log_q).sum(1)).mean().item()) > 1e-2
    # The public bound U(x) is the same computation, its noise from the given generator.
    eps = torch.randn((3, 5, 2), generator=torch.Generator().manual_seed(0))
    elbos = torch.stack([elbo_by_hand(model, x, c, eps[c]) for c in range(3)], 1)
    u = (q * elbos).sum(1) - (q * log_q).sum(1)
    assert torch.allclose(model.elbo(x, torch.Generator().manual_seed(0)), u, atol=1e-5)


def test_labelled_loss_adds_alpha_times_the_cross_entropy_and_batches_mix():
    model = build(alpha=7.0)
    x, y = binary(4), torch.tensor([2, 0, 1, 2])
    torch.manual_seed(3)
    loss = model({"x": x, "y": y})["loss"]
    torch.manual_seed(3)
    eps = torch.randn(4, 2)  # (B_labelled, Z)
    elbo = torch.stack(
        [elbo_by_hand(model, x[i : i + 1], int(y[i]), eps[i : i + 1]) for i in range(4)]
    )
    ce = -model.classifier(x).log_softmax(1)[torch.arange(4), y]
    assert loss.item() == pytest.approx((-elbo.squeeze(1) + 7.0 * ce).mean().item(), rel=1e-5)
    # A mixed batch: the batch mean of both kinds of rows (unlabelled noise first).
    xm, ym = torch.cat([x, binary(2, seed=9)]), torch.cat([y, torch.tensor([-1, -1])])
    torch.manual_seed(4)
    mixed = model({"x": xm, "y": ym})["loss"]
    torch.manual_seed(4)
    eps_u, eps_l = torch.randn(3, 2, 2), torch.randn(4, 2)
    xu = xm[4:]
    log_q = model.classifier(xu).log_softmax(1)
    elbos = torch.stack([elbo_by_hand(model, xu, c, eps_u[c]) for c in range(3)], 1)
    u = (log_q.exp() * (elbos - log_q)).sum(1)
    lab = torch.stack(
        [elbo_by_hand(model, x[i : i + 1], int(y[i]), eps_l[i : i + 1]) for i in range(4)]
    )
    want = ((-lab.squeeze(1) + 7.0 * ce).sum() - u.sum()) / 6
    assert mixed.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"labels must be -1 \(unlabelled\) or 0\.\.2"):
        model({"x": x, "y": torch.tensor([0, 3, 0, 0])})


def grid_log_lik(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | grid point) ``(B, G)``: Bernoulli logits ``(G, D)`` at each point of a grid."""
    return -F.binary_cross_entropy_with_logits(
        logits.unsqueeze(0).expand(len(x), -1, -1),
        x.to(logits.dtype).unsqueeze(1).expand(-1, len(logits), -1),
        reduction="none",
    ).sum(-1)


def quadrature_log_probs(model: M2VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x | y) ``(B, K)`` by quadrature over a 1-d latent (z on a fine grid in [-8, 8])."""
    z = torch.linspace(-8, 8, 4001, dtype=torch.float64).unsqueeze(1)
    dz = 16 / 4000
    log_pz = -0.5 * (z.squeeze(1) ** 2 + math.log(2 * math.pi))
    out = []
    model = model.double()
    for c in range(model.config.num_classes):
        onehot = torch.zeros(len(z), model.config.num_classes, dtype=torch.float64)
        onehot[:, c] = 1
        log_lik = grid_log_lik(model.decoder(torch.cat([z, onehot], 1)), x)  # (B, G)
        out.append(torch.logsumexp(log_lik + log_pz, 1) + math.log(dz))
    model.float()
    return torch.stack(out, 1)


def strong(model: M2VAE, seed: int, prior_proposal: bool = False) -> M2VAE:
    """Decoder and classifier weights large enough that p(x|y) and q(y|x) differ between classes
    and states; with ``prior_proposal`` q(z|x,y) = N(0, I) (the encoder's output layer zeroed:
    a well-behaved importance sampler for the 1-d latent of the quadrature checks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*model.decoder.parameters(), *model.classifier.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 1.5)
        if prior_proposal:
            model.encoder[-1].weight.zero_()
            model.encoder[-1].bias.zero_()
    return model


def assert_estimates_match(model: M2VAE, exact_cond: torch.Tensor):
    """``score`` of the 8 states of 3 bits, unconditional and given a label, against the exact
    log p(x | y) ``(8, K)`` (K = 3): within 4 of the estimate's own standard errors plus float32
    rounding. Returns the unconditional result and the exact log p(x)."""
    states = binary_states((3,))
    exact = torch.logsumexp(exact_cond - math.log(3), 1).float()
    assert exact.exp().sum().item() == pytest.approx(1.0, abs=1e-4)  # the quadrature is right
    assert exact.max() - exact.min() > 1.0  # not near-uniform: the check has teeth
    res = model.score(states, generator=torch.Generator().manual_seed(0))
    assert res.method == "iwae-enum-y-k=20000"
    assert (res.stderr > 0).all() and (res.stderr < 0.1).all()
    assert ((res.log_prob - exact).abs() < 4 * res.stderr + 1e-3).all(), (res.log_prob, exact)
    # The conditional likelihood, labelled as such.
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    cond = model.score(states, generator=torch.Generator().manual_seed(0), condition={"label": y})
    assert cond.method == "conditional-iwae-k=20000"
    want = exact_cond[torch.arange(8), y].float()
    assert ((cond.log_prob - want).abs() < 4 * cond.stderr + 1e-3).all(), (cond.log_prob, want)
    return res, exact


def test_log_prob_with_y_enumerated_matches_quadrature():
    model = build(d=3, latent_dim=1, eval_k=20000, eval_chunk=5000)
    model = strong(model, seed=1, prior_proposal=True).eval()
    states = binary_states((3,))
    exact_cond = quadrature_log_probs(model, states)  # (8, K)
    res, exact = assert_estimates_match(model, exact_cond)
    # Control: summing the classes without the prior p(y) = 1/K overshoots by log K.
    no_prior = torch.logsumexp(exact_cond, 1).float()
    assert not torch.allclose(res.log_prob, no_prior, atol=0.5)
    # The training bound lies below.
    assert (model.elbo(states, torch.Generator().manual_seed(0)) < exact + 1e-4).all()


def test_conditional_samples_follow_p_x_given_y():
    model = strong(build(d=3, latent_dim=1), seed=2).eval()
    states = binary_states((3,))
    probs = quadrature_log_probs(model, states).exp()[:, 1].float()  # p(x | y=1)
    x = model.sample(20000, generator=torch.Generator().manual_seed(0), condition={"label": 1})
    idx = (x @ torch.tensor([4.0, 2.0, 1.0])).long()
    freq = torch.bincount(idx, minlength=8).float() / 20000
    assert (freq - probs).abs().max() < 0.015
    other = quadrature_log_probs(model, states).exp()[:, 0].float()
    assert (freq - other).abs().max() > 0.05  # control: the class matters
    with pytest.raises(ValueError, match=r"label must be in 0\.\.2"):
        model.sample(2, condition={"label": 3})


def test_classify_is_log_q_y_given_x():
    model = build().eval()
    x = binary(5)
    out = model.classify(x)
    assert out.shape == (5, 3)
    assert torch.allclose(out.logsumexp(1), torch.zeros(5), atol=1e-6)
    assert torch.allclose(out, model.classifier(x).log_softmax(1))


PROTOS = torch.tensor([[1.0] * 8 + [0.0] * 8, [0.0] * 8 + [1.0] * 8])


def two_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prototypes on 16 dims with 15% bit flips."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    x = PROTOS[y]
    flips = torch.rand(n, 16, generator=g) < 0.15
    return torch.where(flips, 1 - x, x), y


def train_few_labels(labels: torch.Tensor, steps: int = 25, swap: bool = False, **config) -> float:
    """``steps`` Adam steps on 32 unlabelled rows + 8 labelled rows per batch; the mean
    probability q(y|x) gives the true class of 400 held-out rows."""
    torch.manual_seed(0)
    model = genmodels.build(
        "m2vae", input_shape=(16,), num_classes=2, latent_dim=2, hidden_sizes=(16,),
        alpha=10.0, lr=1e-2, **config,
    )  # fmt: skip
    opt = model.configure_optimizers()["main"]
    x_unl, _ = two_classes(256, seed=1)
    x_lab = PROTOS[[0, 0, 0, 0, 1, 1, 1, 1]]
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        idx = torch.randint(len(x_unl), (32,), generator=g)
        batch = {
            "x": torch.cat([x_unl[idx], x_lab]),
            "y": torch.cat([torch.full((32,), -1), labels]),
        }
        opt.zero_grad()
        model(batch)["loss"].backward()
        opt.step()
    x_test, y_test = two_classes(400, seed=3)
    log_p = model.eval().classify(x_test)
    truth = 1 - y_test if swap else y_test  # swap: the labels name the prototypes the other way
    return log_p[torch.arange(400), truth].exp().mean().item()


def test_few_labels_classify_far_above_chance_and_uninformative_labels_do_not():
    right = train_few_labels(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert right > 0.9, right
    # The classes follow the labels, not a lucky split of the clusters: labels that name the
    # prototypes the other way round give the other classifier.
    swapped = train_few_labels(torch.tensor([1, 1, 1, 1, 0, 0, 0, 0]), swap=True)
    assert swapped > 0.9, swapped
    # Control: the same rows with labels independent of the class (half of each prototype
    # labelled 0, half 1) teach nothing about the class.
    noise = train_few_labels(torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]))
    assert 0.3 < noise < 0.7, noise
    # ADGM (an auxiliary a in q(y | a, x)) learns the same from the same labels, and not from
    # the uninformative ones.
    assert train_few_labels(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), aux_dim=2) > 0.9
    assert 0.3 < train_few_labels(torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]), aux_dim=2) < 0.7


def test_shift_translates_the_training_digits_every_network_sees_in_training_only():
    shape = (1, 6, 6)
    x = torch.bernoulli(torch.full((8, *shape), 0.4), generator=torch.Generator().manual_seed(1))
    batch = {"x": x, "y": torch.tensor([0, 1, 2, -1, -1, -1, -1, -1])}
    seen: list[torch.Tensor] = []  # what the classifier, then the encoder, take in
    for shift, train in ((2, True), (0, True), (2, False)):
        torch.manual_seed(0)
        model = genmodels.build(
            "m2vae", input_shape=shape, num_classes=3, latent_dim=2, hidden_sizes=(8,), shift=shift
        ).train(train)
        seen.clear()
        hooks = [
            net.register_forward_pre_hook(lambda m, a: seen.append(a[0][..., :36]))
            for net in (model.classifier, model.encoder)
        ]
        torch.manual_seed(3)
        model(batch)
        for h in hooks:
            h.remove()
        classified = seen[0].view(len(x), *shape)
        if shift and train:
            assert all(is_a_shift(classified[i], x[i], 2) is not None for i in range(len(x)))
            assert not torch.equal(classified, x)  # control: they moved
            # the encoder sees the same translated digits (unlabelled rows once per class)
            assert all(torch.equal(u, seen[0][3:]) for u in seen[1])  # (K, 5, 36)
            assert torch.equal(seen[2], seen[0][:3])
        else:
            assert torch.equal(classified, x)  # shift 0, or evaluation: the digits as they are
    with pytest.raises(ValueError, match="shift must be >= 0"):
        genmodels.build("m2vae", input_shape=shape, shift=-1)
    with pytest.raises(ValueError, match=r"shift needs image inputs \(C, H, W\)"):
        genmodels.build("m2vae", input_shape=(6,), shift=1)


# ------------------------------------------------------------------------------ M1+M2 (stacked)
def build_stacked(d: int = 3, seed: int = 0, **config) -> M2VAE:
    """M1+M2 with 1-d codes z1 and 1-d z2 (for quadrature), 3 classes."""
    tiny = {"latent_dim": 1, "m1_latent_dim": 1, "m1_hidden_sizes": (8,)}
    return build(d=d, seed=seed, **{**tiny, **config})


def tame(model: M2VAE, seed: int) -> M2VAE:
    """Weights for the quadrature checks: p(x | z1) and q(y | z1) that vary strongly, p(z1 | y,
    z2) with moderate means and a log-variance near its bias; proposals q(z1 | x) = N(0, 2^2) (wider than M2's
    p(z1)) and q(z2 | z1, y) = N(0, 1) (the prior): importance weights of finite variance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*model.m1_decoder.parameters(), *model.classifier.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 1.5)
        for p in model.decoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        model.decoder[-1].weight[1:] *= 0.1  # the log-variance: near its bias, sd near 1
        for net, log_sd in ((model.m1_encoder, math.log(2.0)), (model.encoder, 0.0)):
            net[-1].weight.zero_()
            net[-1].bias.copy_(torch.tensor([0.0, 2 * log_sd]))
    return model


def stacked_quadrature(model: M2VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x | y) ``(B, K)`` of the stack by quadrature over (z1, z2) on grids; asserts the
    grids resolve p(z1 | y, z2)."""
    model = model.double()
    z2 = torch.linspace(-8, 8, 801, dtype=torch.float64).unsqueeze(1)
    z1 = torch.linspace(-12, 12, 2401, dtype=torch.float64).unsqueeze(1)
    d2, d1 = 16 / 800, 24 / 2400
    log_px = grid_log_lik(model.m1_decoder(z1), x)  # (B, G1)
    log_pz2 = -0.5 * (z2.squeeze(1) ** 2 + math.log(2 * math.pi))
    out = []
    for c in range(model.config.num_classes):
        onehot = torch.zeros(len(z2), model.config.num_classes, dtype=torch.float64)
        onehot[:, c] = 1
        mean, logvar = model.decoder(torch.cat([z2, onehot], 1)).chunk(2, 1)  # (G2, 1)
        logvar = logvar.clamp(-12, 8)
        assert logvar.min() > -3.0  # sd > 0.2: 20 grid steps per sd at least
        log_pz1 = -0.5 * (math.log(2 * math.pi) + logvar + (z1.T - mean) ** 2 / logvar.exp())
        joint = log_pz1 + log_pz2.unsqueeze(1)  # (G2, G1)
        log_prior_z1 = torch.logsumexp(joint, 0) + math.log(d2)  # log p(z1 | y) (G1,)
        out.append(torch.logsumexp(log_px + log_prior_z1, 1) + math.log(d1))
    model.float()
    return torch.stack(out, 1)


def test_stacked_log_prob_matches_quadrature_over_both_latents():
    model = tame(build_stacked(eval_k=20000, eval_chunk=5000), seed=1).eval()
    states = binary_states((3,))
    exact_cond = stacked_quadrature(model, states)  # (8, K)
    res, exact = assert_estimates_match(model, exact_cond)
    # Control: M1 alone under its own N(0, 1) prior is another density; the estimate is not it.
    z1 = torch.linspace(-12, 12, 2401).unsqueeze(1)
    log_px = grid_log_lik(model.m1_decoder(z1), states)
    m1_alone = torch.logsumexp(log_px - 0.5 * (z1.T**2 + math.log(2 * math.pi)), 1) + math.log(0.01)
    assert (res.log_prob - m1_alone).abs().max() > 0.1
    # The stack's training bound lies below (one draw each: check the mean of many).
    g = torch.Generator().manual_seed(1)
    bound = torch.stack([model.elbo(states, g) for _ in range(200)]).mean(0)
    assert (bound < exact).all(), (bound, exact)


def test_stacked_conditional_samples_follow_the_stack():
    model = tame(build_stacked(), seed=2).eval()
    states = binary_states((3,))
    probs = stacked_quadrature(model, states).exp().float()  # (8, K)
    x = model.sample(20000, generator=torch.Generator().manual_seed(0), condition={"label": 1})
    freq = torch.bincount((x @ torch.tensor([4.0, 2.0, 1.0])).long(), minlength=8) / 20000
    assert (freq - probs[:, 1]).abs().max() < 0.015
    assert (freq - probs[:, 0]).abs().max() > 0.05  # control: the class matters


def test_stacked_loss_is_m1_bound_plus_m2_on_a_code_draw_with_the_gradient_stopped():
    model = tame(build_stacked(d=6, seed=4), seed=3)
    x, k = binary(5), 3
    torch.manual_seed(7)
    loss = model({"x": x, "y": torch.full((5,), -1)})["loss"]
    torch.manual_seed(7)
    eps1, eps2 = torch.randn(5, 1), torch.randn(k, 5, 1)  # z1 first, then (K, B, Z)
    h = model.m1_encoder(x)
    mu1, logvar1 = h[:, :1], h[:, 1:]
    z1 = mu1 + eps1 * torch.exp(logvar1 / 2)
    logits = model.m1_decoder(z1)
    log_lik = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(1)
    elbo1 = log_lik - 0.5 * (mu1**2 + logvar1.exp() - 1 - logvar1).sum(1)

    def m2_bound(u: torch.Tensor) -> torch.Tensor:  # U(z1) written out, Gaussian p(z1 | y, z2)
        elbos = []
        for c in range(k):
            onehot = F.one_hot(torch.full((5,), c), k).float()
            mu, logvar = model.encoder(torch.cat([u, onehot], 1)).chunk(2, 1)
            z = mu + eps2[c] * torch.exp(logvar / 2)
            mean, lv = model.decoder(torch.cat([z, onehot], 1)).chunk(2, 1)
            log_p = -0.5 * (math.log(2 * math.pi) + lv + (u - mean) ** 2 / lv.exp()).sum(1)
            kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
            elbos.append(log_p - kl - math.log(k))
        log_q = model.classifier(u).log_softmax(1)
        return (log_q.exp() * (torch.stack(elbos, 1) - log_q)).sum(1)

    want = (-elbo1 - m2_bound(z1.detach())).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    m1 = list(model.m1_encoder.parameters())
    got = torch.autograd.grad(loss, m1, retain_graph=True)
    own = torch.autograd.grad((-elbo1).mean(), m1, retain_graph=True)  # M1's bound alone
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, own, strict=True))
    # Control: without the stop, M2's loss would reach M1's encoder.
    joint = torch.autograd.grad((-elbo1 - m2_bound(z1)).mean(), m1)
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(joint, own, strict=True))


def test_stacked_classify_reads_the_code_mean():
    model = build_stacked(d=6).eval()
    x = binary(5)
    out = model.classify(x)
    mu1 = model.m1_encoder(x)[:, :1]
    assert torch.allclose(out, model.classifier(mu1).log_softmax(1))
    assert not torch.allclose(out, model.classify(1 - x))  # control: it reads x
    with pytest.raises(ValueError, match="m1_latent_dim must be >= 0"):
        build(m1_latent_dim=-1)


def test_classifier_noise_perturbs_only_what_q_reads_in_training():
    x = binary(400, d=6)
    batch = {"x": x, "y": torch.full((400,), -1)}
    for noise, train in ((0.3, True), (0.0, True), (0.3, False)):
        model = build(classifier_noise=noise).train(train)
        seen: dict[str, torch.Tensor] = {}
        hooks = [
            net.register_forward_pre_hook(
                lambda m, a, key=key, seen=seen: seen.setdefault(key, a[0])
            )
            for key, net in (("q", model.classifier), ("enc", model.encoder))
        ]
        torch.manual_seed(0)
        model(batch)
        for h in hooks:
            h.remove()
        assert torch.equal(seen["enc"][0, :, :6], x)  # q(z|x,y) sees the digits as they are
        if noise and train:
            assert (seen["q"] - x).std().item() == pytest.approx(0.3, rel=0.05)
        else:
            assert torch.equal(seen["q"], x)  # control: no noise, or evaluation
    model = build(classifier_noise=0.3).eval()
    assert torch.allclose(model.classify(x), model.classifier(x).log_softmax(1))
    with pytest.raises(ValueError, match="classifier_noise must be >= 0"):
        build(classifier_noise=-0.1)


def test_classifier_channels_makes_q_a_cnn_over_the_image():
    shape = (1, 6, 6)
    x = torch.bernoulli(torch.full((5, *shape), 0.4), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = genmodels.build(
        "m2vae", input_shape=shape, num_classes=3, latent_dim=2, hidden_sizes=(8,),
        classifier_channels=4,
    ).eval()  # fmt: skip
    convs = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 8]
    out = model.classify(x)
    assert torch.allclose(out, model.classifier.net(x).log_softmax(1))
    assert torch.allclose(out.logsumexp(1), torch.zeros(5), atol=1e-6)
    # It reads the image's layout: the same pixels transposed give other class probabilities.
    assert not torch.allclose(out, model.classify(x.transpose(2, 3)), atol=1e-4)
    batch = {"x": x, "y": torch.tensor([0, -1, 2, -1, -1])}
    model.train()(batch)["loss"].backward()
    assert all(p.grad is not None for p in model.classifier.parameters())
    with pytest.raises(ValueError, match=r"classifier_channels needs image inputs"):
        build(classifier_channels=4)  # flat (6,) inputs
    with pytest.raises(ValueError, match=r"classifier_channels needs image inputs"):
        genmodels.build("m2vae", input_shape=shape, classifier_channels=4, m1_latent_dim=2)
    with pytest.raises(ValueError, match="classifier_channels must be >= 0"):
        build(classifier_channels=-1)


# ----------------------------------------------------------------------- ADGM (auxiliary a)
def test_adgm_log_prob_matches_quadrature_whatever_the_auxiliary_networks():
    """p(a | x, y, z) integrates to one, so the estimate is of M2's p(x) for any auxiliary
    networks: q(a | x) = N(0, 2^2) and a p(a | x, y, z) whose mean moves with z and y."""
    model = build(d=3, latent_dim=1, aux_dim=1, eval_k=20000, eval_chunk=5000)
    model = strong(model, seed=1, prior_proposal=True).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.aux_decoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        model.aux_decoder[-1].weight[1:] *= 0.1  # log-variance near its bias: sd near 1
        model.aux_encoder[-1].weight.zero_()
        model.aux_encoder[-1].bias.copy_(torch.tensor([0.0, 2 * math.log(2.0)]))
    states = binary_states((3,))
    a = torch.linspace(-3, 3, 7).unsqueeze(1)
    y, z = torch.zeros(7, dtype=torch.long), torch.linspace(-2, 2, 7).unsqueeze(1)
    spread = model.aux_log_prob(a, states[:1].expand(7, 3), y, z)
    assert spread.max() - spread.min() > 1.0  # p(a | x, y, z) varies: the terms matter
    exact_cond = quadrature_log_probs(model, states)  # M2's p(x | y): the decoder alone
    _, exact = assert_estimates_match(model, exact_cond)
    g = torch.Generator().manual_seed(1)
    bound = torch.stack([model.elbo(states, g) for _ in range(200)]).mean(0)
    assert (bound < exact).all(), (bound, exact)  # the training bound lies below
    # Control: weights without p(a | x, y, z) (only the 1 / q(a | x)) estimate another number.
    model.aux_log_prob = lambda a, x, y, z: torch.zeros(z.shape[:-1])
    broken = model.score(states, generator=torch.Generator().manual_seed(0))
    assert ((broken.log_prob - exact).abs() > 4 * broken.stderr + 1e-3).all()


def test_adgm_loss_shares_one_draw_of_a_between_classifier_and_bounds():
    model = build(aux_dim=2, alpha=7.0, classifier_noise=0.3)
    x, y = binary(5), torch.tensor([0, -1, 2, -1, 1])
    torch.manual_seed(7)
    loss = model({"x": x, "y": y})["loss"]
    torch.manual_seed(7)
    eps_a, noise = torch.randn(5, 2), torch.randn(5, 6)  # a, then the classifier's noise
    eps_u, eps_l = torch.randn(3, 2, 2), torch.randn(3, 2)  # (K, B_unl, Z), (B_lab, Z)
    mu_a, lv_a = model.aux_encoder(x).chunk(2, 1)
    a = mu_a + eps_a * torch.exp(lv_a / 2)
    log_qa = normal_log_density(a, mu_a, lv_a)
    log_q = model.classifier(torch.cat([x + 0.3 * noise, a], 1)).log_softmax(1)
    unl, lab = torch.tensor([1, 3]), torch.tensor([0, 2, 4])

    def bound(aux_terms: bool) -> torch.Tensor:
        elbos = torch.stack(
            [
                elbo_by_hand(model, x[unl], c, eps_u[c], a[unl], log_qa[unl], aux_terms)
                for c in range(3)
            ],
            1,
        )
        u = (log_q[unl].exp() * (elbos - log_q[unl])).sum(1)
        rows = [(i, slice(i, i + 1), slice(j, j + 1)) for j, i in enumerate(lab.tolist())]
        labelled = torch.cat(
            [
                elbo_by_hand(model, x[r], int(y[i]), eps_l[e], a[r], log_qa[r], aux_terms)
                for i, r, e in rows
            ]
        )
        ce = -log_q[lab, y[lab]]
        return ((-labelled + 7.0 * ce).sum() - u.sum()) / 5

    assert loss.item() == pytest.approx(bound(True).item(), rel=1e-5)
    # Control: the bound without log p(a | x, y, z) - log q(a | x) is another number.
    assert abs(loss.item() - bound(False).item()) > 1e-2


def test_adgm_classify_reads_the_mean_of_q_a():
    model = build(d=6, aux_dim=2).eval()
    x = binary(5)
    out = model.classify(x)
    mu_a = model.aux_encoder(x)[:, :2]
    assert torch.allclose(out, model.classifier(torch.cat([x, mu_a], 1)).log_softmax(1))
    assert torch.allclose(out.logsumexp(1), torch.zeros(5), atol=1e-6)
    assert torch.allclose(out[2:3], model.classify(x[2:3]), atol=1e-6)  # batch-independent
    # Control: at a draw of a instead of its mean, q(y | a, x) is another distribution.
    a = mu_a + torch.randn(5, 2) * model.aux_encoder(x)[:, 2:].mul(0.5).exp()
    assert not torch.allclose(out, model.classifier(torch.cat([x, a], 1)).log_softmax(1))
    with pytest.raises(ValueError, match="aux_dim must be >= 0"):
        build(aux_dim=-1)
    with pytest.raises(ValueError, match=r"aux_dim \(ADGM\) goes with the MLP classifier"):
        build(aux_dim=2, m1_latent_dim=2)
    with pytest.raises(ValueError, match=r"aux_dim \(ADGM\) goes with the MLP classifier"):
        genmodels.build("m2vae", input_shape=(1, 6, 6), aux_dim=2, classifier_channels=4)
