"""Parameter-free decoupling of each modality into a common and a specific part (step 2 of the
forward pass in docs/model.md).

`paper` follows the published equations exactly. `calibrated` fixes their near-flat softmax: projections are
layer-normalised per modality before comparison, similarities are scaled by a learnable inverse temperature,
and the specific part attends to the time steps *least* similar to the other modalities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcl.sequence import masked_mean

_NEG = -1e9  # masked logits; finite so that an all-masked row gives a uniform softmax instead of NaN


@dataclass(frozen=True)
class Decoupled:
    """One modality's decoupled parts: its common and its specific representation."""

    common: Tensor  # (B, L, D)
    specific: Tensor  # (B, L, D)
    common_weights: Tensor  # (B, L, L) A_m
    specific_weights: Tensor  # (B, L, L)


def cross_similarity(zs: list[Tensor], modality_mask: Tensor) -> list[Tensor]:
    """For each modality m, min over the other *present* modalities of cos(Z_m[i], Z_o[j]): (B, L, L).

    A sample whose partners are all missing gets zeros (a uniform softmax).
    """
    normed = [F.normalize(z, dim=-1) for z in zs]  # unit length per time step
    out = []
    for m, zm in enumerate(normed):
        sims = []
        for o, zo in enumerate(normed):
            if o == m:
                continue
            s = zm @ zo.transpose(1, 2)  # (B, L, L)
            present = modality_mask[:, o].view(-1, 1, 1)
            sims.append(torch.where(present, s, torch.full_like(s, float("inf"))))
        smin = torch.minimum(sims[0], sims[1])
        out.append(torch.where(torch.isinf(smin), torch.zeros_like(smin), smin))
    return out


def unpaired(modality_mask: Tensor, m: int) -> Tensor:
    """(B,) bool: samples in which modality m has no present partner to be compared with."""
    others = [o for o in range(modality_mask.shape[1]) if o != m]
    return ~modality_mask[:, others].any(dim=1)


def _pass_unpaired(weights: Tensor, alone: Tensor) -> Tensor:
    """Weights (B, L, L) with the rows of samples in `alone` replaced by the identity: each step keeps itself."""
    if not bool(alone.any()):
        return weights
    eye = torch.eye(weights.shape[-1], dtype=weights.dtype, device=weights.device)
    return torch.where(alone[:, None, None], eye, weights)


def _masked_softmax(logits: Tensor, key_mask: Tensor | None) -> Tensor:
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, :], _NEG)
    return torch.softmax(logits, dim=-1)


class PaperDecoupling(nn.Module):
    """A_m = softmax(min(S_mo, S_mo')); C_m = A_m Z_m; P_m = softmax(1 - A_m) Z_m.

    A modality with no present partner has nothing to be compared with. `unpaired="mean"` keeps the equations' answer
    (a uniform softmax: every step of both parts becomes the sequence's mean); `"sequence"` passes the sequence on
    as both parts, so the attention and the temporal encoder downstream still see its steps."""

    def __init__(self, unpaired: str = "mean") -> None:
        super().__init__()
        self.keep_unpaired = unpaired == "sequence"

    def forward(self, zs: list[Tensor], time_masks: list[Tensor] | None, modality_mask: Tensor) -> list[Decoupled]:
        sims = cross_similarity(zs, modality_mask)
        parts = []
        for m, (z, s) in enumerate(zip(zs, sims, strict=True)):
            key_mask = None if time_masks is None else time_masks[m]
            a = _masked_softmax(s, key_mask)
            p_w = _masked_softmax(1.0 - a, key_mask)  # 1 - A on the already-softmaxed matrix, as published
            if self.keep_unpaired:
                alone = unpaired(modality_mask, m)
                a, p_w = _pass_unpaired(a, alone), _pass_unpaired(p_w, alone)
            parts.append(Decoupled(a @ z, p_w @ z, a, p_w))
        return parts


class CalibratedDecoupling(nn.Module):
    """LayerNorm per modality before comparison, learnable inverse temperature, contrastive specific part."""

    def __init__(self, d_model: int, init_inv_temperature: float, max_inv_temperature: float,
                 unpaired: str = "mean") -> None:
        super().__init__()
        self.keep_unpaired = unpaired == "sequence"  # as in PaperDecoupling
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.log_inv_temperature = nn.Parameter(torch.tensor(float(init_inv_temperature)).log())
        self.max_log = float(torch.tensor(max_inv_temperature).log())

    @property
    def inv_temperature(self) -> Tensor:
        """The learnt inverse temperature of the similarities, capped."""
        return self.log_inv_temperature.clamp(max=self.max_log).exp()

    def forward(self, zs: list[Tensor], time_masks: list[Tensor] | None, modality_mask: Tensor) -> list[Decoupled]:
        sims = cross_similarity([norm(z) for norm, z in zip(self.norms, zs, strict=True)], modality_mask)
        scale = self.inv_temperature
        parts = []
        for m, (z, s) in enumerate(zip(zs, sims, strict=True)):
            key_mask = None if time_masks is None else time_masks[m]
            a = _masked_softmax(s * scale, key_mask)
            p_w = _masked_softmax(-s * scale, key_mask)  # what the other modalities do not share
            if self.keep_unpaired:
                alone = unpaired(modality_mask, m)
                a, p_w = _pass_unpaired(a, alone), _pass_unpaired(p_w, alone)
            parts.append(Decoupled(a @ z, p_w @ z, a, p_w))
        return parts


def agreement_loss(parts: list[Decoupled], time_masks: list[Tensor], modality_mask: Tensor) -> Tensor:
    """Common parts of present modalities should agree; each specific part should differ from its common part."""
    commons = [F.normalize(masked_mean(p.common, m), dim=-1) for p, m in zip(parts, time_masks, strict=True)]
    specifics = [F.normalize(masked_mean(p.specific, m), dim=-1) for p, m in zip(parts, time_masks, strict=True)]
    present = modality_mask.float()  # (B, 3)
    agree, pairs = commons[0].new_zeros(()), commons[0].new_zeros(())
    for i in range(3):
        for j in range(i + 1, 3):
            both = present[:, i] * present[:, j]
            agree = agree + ((1 - (commons[i] * commons[j]).sum(-1)) * both).sum()
            pairs = pairs + both.sum()
    differ = sum(
        (((commons[m] * specifics[m]).sum(-1) ** 2) * present[:, m]).sum() for m in range(3)
    ) / present.sum().clamp(min=1)
    return agree / max(float(pairs), 1.0) + differ
