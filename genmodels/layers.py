"""Layers shared by several families: masked linear and masked convolution layers, and MADE-style
connectivity masks.

Masks are buffers applied inside ``forward`` (``F.linear(x, W * M)``); the weights themselves are
never overwritten, so a mask can change (several orderings) without touching the parameters.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .optim import adam


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask ``(out, in)`` in ``forward``.

    Several masks can be stored (``(K, out, in)``); ``mask_index`` selects the one in use.
    """

    def __init__(self, in_features: int, out_features: int, masks: Tensor, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if masks.dim() == 2:
            masks = masks.unsqueeze(0)
        if tuple(masks.shape[1:]) != (out_features, in_features):
            raise ValueError(
                f"mask shape {tuple(masks.shape)} != (K, {out_features}, {in_features})"
            )
        self.register_buffer("masks", masks.float())
        self.mask_index = 0

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.masks[self.mask_index], self.bias)


def made_degrees(
    num_inputs: int,
    hidden_sizes: tuple[int, ...],
    order: Tensor,
    generator: torch.Generator,
    random_connectivity: bool = True,
) -> list[Tensor]:
    """Degrees of MADE's units (Germain et al. 2015, eq. 12-13).

    ``order[d]`` is the position (1..D) of input d in the autoregressive order. A hidden unit of
    degree m may see inputs of degree <= m; hidden degrees lie in [min degree of the layer below,
    D - 1], drawn at random (connectivity-agnostic) or spread evenly.
    """
    degrees = [order.long()]
    for size in hidden_sizes:
        low = min(int(degrees[-1].min()), num_inputs - 1)
        if random_connectivity:
            deg = torch.randint(low, num_inputs, (size,), generator=generator)
        else:
            deg = (torch.arange(size) % max(1, num_inputs - low)) + low
        degrees.append(deg)
    return degrees


def made_masks(degrees: list[Tensor], num_outputs_per_input: int = 1) -> list[Tensor]:
    """Masks ``(out, in)`` for each layer from the degrees: hidden ``>=``, output strictly ``>``.

    The output layer has ``num_outputs_per_input`` units per input, grouped input-major.
    """
    masks = [(d_out[:, None] >= d_in[None, :]) for d_in, d_out in itertools.pairwise(degrees)]
    out_deg = degrees[0].repeat_interleave(num_outputs_per_input)
    masks.append(out_deg[:, None] > degrees[-1][None, :])
    return [m.float() for m in masks]


def conv_mask(
    out_channels: int,
    in_channels: int,
    kernel_size: int,
    mask_type: str,
    data_channels: int = 1,
) -> Tensor:
    """PixelCNN's causal mask ``(out, in, k, k)`` (van den Oord et al. 2016, Figure 2).

    A pixel sees the rows above and the pixels to its left; at the centre, channels follow the
    within-pixel order of the ``data_channels`` data channels (R then G then B): channel ``i``
    belongs to group ``i % data_channels`` and an output of group ``g`` sees input groups ``< g``
    (type ``"A"``, the first layer: a pixel never sees itself) or ``<= g`` (type ``"B"``).
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    c = kernel_size // 2
    mask = torch.zeros(out_channels, in_channels, kernel_size, kernel_size)
    mask[:, :, :c, :] = 1.0  # rows above
    mask[:, :, c, :c] = 1.0  # left of the centre, same row
    out_group = torch.arange(out_channels) % data_channels
    in_group = torch.arange(in_channels) % data_channels
    if mask_type == "A":
        centre = out_group[:, None] > in_group[None, :]
    else:
        centre = out_group[:, None] >= in_group[None, :]
    mask[:, :, c, c] = centre.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """Square ``nn.Conv2d`` ("same" padding) whose weight is multiplied by ``conv_mask`` in
    ``forward``, so output ``(i, j)`` depends only on inputs before it in raster order."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        mask_type: str,
        data_channels: int = 1,
        bias: bool = True,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.mask_type = mask_type
        mask = conv_mask(out_channels, in_channels, kernel_size, mask_type, data_channels)
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class LocalARHead(MaskedConv2d):
    """A local autoregressive head for a latent-variable decoder's Bernoulli pixels: a linear
    causal ("A"-masked, raster order, the pixel itself hidden) ``k x k`` convolution of the pixels
    already drawn (as 2x - 1), added to the decoder's logits, zero at initialisation (a decoder of
    independent pixels until trained). log p(x | z) = sum_i log Bernoulli(x_i; sigmoid(logit_i +
    head(x)_i)) stays exact given z; ``sample`` draws the pixels in raster order (one small dot
    product each). Used by ``captionvae`` and the VAE's ``ar_kernel``: it makes a pixel agree
    with its drawn neighbours, removing the salt-and-pepper noise of independent pixels at the
    strokes' edges (cf. PixelVAE, Gulrajani et al. 2016, whose head is a deep PixelCNN)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"ar_kernel must be 0 or odd and >= 3, got {kernel_size}")
        super().__init__(channels, channels, kernel_size, "A", channels, bias=False)
        nn.init.zeros_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """The head's logit shifts ``(B, C, H, W)`` for binary images ``x`` (0/1)."""
        return super().forward(2 * x - 1)

    @torch.no_grad()
    def sample(self, logits: Tensor, u: Tensor) -> Tensor:
        """Raster-order draws ``(N, C, H, W)``: pixel i is on when u_i < sigmoid(logits_i +
        head(x_<i)_i), the head read from a ``k x k`` window of the pixels drawn so far (the
        window's other entries are masked to zero)."""
        n, c, h, w = logits.shape
        k = self.kernel_size[0]
        weight = self.weight * self.mask  # (C, C, k, k)
        canvas = logits.new_zeros(n, c, h + k - 1, w + k - 1)  # 2x - 1, zero padding
        x = torch.zeros_like(logits)
        for r in range(h):
            for col in range(w):
                window = canvas[:, :, r : r + k, col : col + k]
                for ch in range(c):
                    logit = logits[:, ch, r, col] + (window * weight[ch]).sum((1, 2, 3))
                    on = (u[:, ch, r, col] < torch.sigmoid(logit)).to(x.dtype)
                    x[:, ch, r, col] = on
                    canvas[:, ch, r + k // 2, col + k // 2] = 2 * on - 1
        return x


def adam_per_phase(model, weight_decay: float | None = None) -> dict[str, torch.optim.Optimizer]:
    """One Adam per phase of an adversarial model, over ``model.phase_parameters(phase)``, with the
    config's ``lr``, ``beta1`` (beta2 0.999, the DCGAN choice) and ``weight_decay``."""
    cfg = model.config
    decay = cfg.weight_decay if weight_decay is None else weight_decay
    return {
        phase: adam(
            model.phase_parameters(phase), lr=cfg.lr, betas=(cfg.beta1, 0.999), weight_decay=decay
        )
        for phase in model.phases
    }


def check_shift(family: str, k: int, input_shape: tuple[int, ...]) -> None:
    """Refuse a ``shift`` config a family cannot use: negative, or on non-image inputs."""
    if k < 0:
        raise ValueError(f"{family}: shift must be >= 0, got {k}")
    if k and len(input_shape) != 3:
        raise ValueError(
            f"{family}: shift needs image inputs (C, H, W), got input_shape {input_shape}"
        )


def random_shift(x: Tensor, k: int) -> Tensor:
    """Each image of ``x`` ``(B, C, H, W)`` translated by its own (dy, dx), each uniform on
    -k..k, with zeros shifted in (no wrap-around): a data augmentation for training (the global
    RNG draws the offsets, as any training noise). ``k = 0`` returns ``x``."""
    if k == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (k, k, k, k))  # (B, C, H + 2k, W + 2k)
    dy, dx = torch.randint(0, 2 * k + 1, (2, b), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    padded = padded.gather(2, rows.expand(b, c, h, w + 2 * k))  # (B, C, H, W + 2k)
    return padded.gather(3, cols.expand(b, c, h, w))


def spectral_normalise(*modules: nn.Module) -> None:
    """Spectral normalisation (Miyato, Kataoka, Koyama & Yoshida 2018) of every linear and conv
    layer in ``modules``: each weight is used divided by its largest singular value, estimated by
    one power iteration per training-mode forward pass (torch's parametrization)."""
    for module in modules:
        for m in list(module.modules()):
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.utils.parametrizations.spectral_norm(m)
