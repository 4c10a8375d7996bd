"""The MMCL network (arXiv 2501.12424; steps 1-7 of docs/model.md) and its DDPG critic.

Shapes: B batch, L sequence, D width, h heads."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmcl.config import MODALITIES, ModelConfig
from mmcl.decoupling import CalibratedDecoupling, Decoupled, PaperDecoupling, agreement_loss
from mmcl.sequence import masked_mean


@dataclass(frozen=True)
class ModelOutput:
    """What a forward pass returns: predictions, the decoupled parts, and what the losses need."""

    logits: Tensor  # (B, K)
    modality_weights: Tensor | None  # (B, 3) w_m in (0, 1); 0 where the modality is missing
    states: list[Tensor] | None = None  # per modality: specific part P_m (B, L, D), the policy's state
    actions: list[Tensor] | None = None  # per modality: gate a_m (B, L, 1)
    aux_loss: Tensor | None = None


def effective_time_masks(time_masks: list[Tensor]) -> list[Tensor]:
    """Rows with no valid step (a missing modality) become all-valid zeros, so attention never sees an empty key set;
    the modality mask removes them from fusion."""
    return [m | ~m.any(dim=1, keepdim=True) for m in time_masks]


class IntraModalAttention(nn.Module):
    """Self-attention on the common part; LayerNorm(H + Linear(H)), no residual from the input (as published)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.linear = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h, _ = self.attn(x, x, x, key_padding_mask=~mask, need_weights=False)  # (B, L, D)
        return masked_mean(self.norm(h + self.linear(h)), mask)  # (B, D)


def encoder_layer(d_model: int, num_heads: int, ff_dim: int, dropout: float) -> nn.TransformerEncoderLayer:
    """A post-norm Transformer encoder layer, batch first, as the reference model uses."""
    return nn.TransformerEncoderLayer(
        d_model, num_heads, ff_dim, dropout, activation="relu", batch_first=True, norm_first=False
    )


class Head(nn.Module):
    """Linear(2D->D) -> Dropout -> ReLU -> BatchNorm1d(D) -> Linear(D->K)."""

    def __init__(self, d_in: int, d_hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, d_hidden), nn.Dropout(dropout), nn.ReLU(), nn.BatchNorm1d(d_hidden), nn.Linear(d_hidden, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class MMCL(nn.Module):
    """Multi-modality collaborative learning: decoupling, per-modality actors and a fused head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h = cfg.d_model, cfg.num_heads
        self.projections = nn.ModuleList(nn.Linear(dim, d) for dim in cfg.input_dims)
        if cfg.decoupling == "paper":
            self.decoupling: nn.Module = PaperDecoupling(cfg.unpaired)
        else:
            self.decoupling = CalibratedDecoupling(d, cfg.init_inv_temperature, cfg.max_inv_temperature, cfg.unpaired)
        self.intra = nn.ModuleList(IntraModalAttention(d, h, cfg.encoder_dropout) for _ in range(3))
        layer = encoder_layer(d, h, cfg.ff_dim, cfg.encoder_dropout)
        # The reference builds the three encoders from one layer object: independent weights, identical start.
        self.temporal = nn.ModuleList(_clone(layer) for _ in range(3))
        self.fusion_hidden = nn.Linear(2 * d, d)  # shared by the three modalities (matches the ~2.16 M count)
        self.fusion_out = nn.Linear(d, 1)
        # Actor: the policy gates and the head (the reference optimises them together).
        self.gates = nn.ModuleList(nn.Linear(d, 1) for _ in range(3))
        self.head = Head(2 * d, d, cfg.task.output_dim, cfg.dropout)
        self.used: Tensor  # (3,) bool; derived from the config, so not part of the weights
        self.register_buffer("used", torch.tensor(cfg.used), persistent=False)

    def actor_parameters(self) -> list[nn.Parameter]:
        """The parameters the act-reward step trains: the gates and the head."""
        return [*self.gates.parameters(), *self.head.parameters()]

    def body_parameters(self) -> list[nn.Parameter]:
        """Every other parameter, trained by the supervised loss."""
        actor = {id(p) for p in self.actor_parameters()}
        return [p for p in self.parameters() if id(p) not in actor]

    def policy(self, m: int, state: Tensor) -> Tensor:
        """Modality m's gate: how much of each step's state it passes on, (B, L, 1) in [0, 1]; closed for a modality
        the model does not read."""
        return gate(self.gates[m], state, self.cfg.used[m])

    def decouple(self, xs: list[Tensor], time_masks: list[Tensor], modality_mask: Tensor) -> list[Decoupled]:
        """Project each modality and split it into common and specific parts."""
        zs = [proj(x) if used else x.new_zeros(*x.shape[:2], self.cfg.d_model)  # each (B, L, D)
              for proj, x, used in zip(self.projections, xs, self.cfg.used, strict=True)]
        decoupled: list[Decoupled] = self.decoupling(zs, time_masks, modality_mask)
        return decoupled

    def forward(
        self, xs: list[Tensor], time_masks: list[Tensor], modality_mask: Tensor, *, with_aux: bool = False
    ) -> ModelOutput:
        # a modality the model does not read counts as missing, and a missing one contributes nothing, whatever its
        # tensor holds
        modality_mask = modality_mask & self.used
        xs = [x * modality_mask[:, m, None, None].to(x.dtype) for m, x in enumerate(xs)]
        time_masks = effective_time_masks(time_masks)
        parts = self.decouple(xs, time_masks, modality_mask)
        embeddings, states, actions = [], [], []
        for m, part in enumerate(parts):
            if not self.cfg.used[m]:  # its fusion weight is 0: its encoders would change nothing
                embeddings.append(part.specific.new_zeros(part.specific.shape[0], 2 * self.cfg.d_model))
                states.append(torch.zeros_like(part.specific))
                actions.append(part.specific.new_zeros(*part.specific.shape[:2], 1))
                continue
            c = self.intra[m](part.common, time_masks[m])  # (B, D)
            a = self.policy(m, part.specific)  # (B, L, 1)
            enc = self.temporal[m](part.specific * a, src_key_padding_mask=~time_masks[m])  # (B, L, D)
            p = masked_mean(enc, time_masks[m])  # (B, D)
            embeddings.append(torch.cat([c, p], dim=-1))  # (B, 2D)
            states.append(part.specific)
            actions.append(a)
        e = torch.stack(embeddings, dim=1)  # (B, 3, 2D)
        present = modality_mask.to(e.dtype)  # (B, 3)
        w = torch.sigmoid(self.fusion_out(self.fusion_hidden(e))).squeeze(-1) * present  # (B, 3)
        fused = (w.unsqueeze(-1) * e).sum(1) / present.sum(1, keepdim=True).clamp(min=1.0)  # (B, 2D); /3 if all present
        aux = agreement_loss(parts, time_masks, modality_mask) if with_aux and self.cfg.decoupling == "calibrated" else None
        return ModelOutput(self.head(fused), w, states, actions, aux)


def gate(layer: nn.Module, state: Tensor, used: bool) -> Tensor:
    """A policy gate's output for `state` (B, L, D) -> (B, L, 1) in [0, 1]; 0 for a modality the model does not read."""
    if not used:
        return state.new_zeros(*state.shape[:-1], 1)
    return torch.sigmoid(layer(state))  # deterministic


class Critic(nn.Module):
    """Q(s, a): per modality, [s ; a tiled h times] -> encoder layer -> mean; concat -> MLP -> scalar."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, h = cfg.d_model, cfg.num_heads
        self.tile = h
        width = d + h
        layer = encoder_layer(width, h, cfg.ff_dim, cfg.encoder_dropout)
        self.encoders = nn.ModuleList(_clone(layer) for _ in range(3))
        self.mlp = nn.Sequential(
            nn.Linear(3 * width, 2 * d),
            nn.Linear(2 * d, d),
            nn.Dropout(cfg.dropout),
            nn.ReLU(),
            nn.BatchNorm1d(d),
            nn.Linear(d, 1),
        )

    def forward(self, states: list[Tensor], actions: list[Tensor], time_masks: list[Tensor]) -> Tensor:
        pooled = []
        time_masks = effective_time_masks(time_masks)
        for m in range(3):
            x = torch.cat([states[m], actions[m].expand(-1, -1, self.tile)], dim=-1)  # (B, L, D + h)
            pooled.append(masked_mean(self.encoders[m](x, src_key_padding_mask=~time_masks[m]), time_masks[m]))
        values: Tensor = self.mlp(torch.cat(pooled, dim=-1)).squeeze(-1)  # (B,)
        return values


class LateFusionBaseline(nn.Module):
    """Pooled features per modality (mean and std over valid steps) -> MLP. Single-modality via use_modalities."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.used = [MODALITIES.index(m) for m in cfg.use_modalities]
        width = sum(2 * cfg.input_dims[m] for m in self.used)
        h = cfg.baseline_hidden
        self.norm = nn.LayerNorm(width)
        self.net = nn.Sequential(
            nn.Linear(width, h), nn.ReLU(), nn.Dropout(0.2), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, cfg.task.output_dim)
        )

    def forward(
        self, xs: list[Tensor], time_masks: list[Tensor], modality_mask: Tensor, *, with_aux: bool = False
    ) -> ModelOutput:
        feats = []
        for m in self.used:
            mean = masked_mean(xs[m], time_masks[m])
            std = (masked_mean(xs[m] ** 2, time_masks[m]) - mean**2).clamp(min=0).sqrt()
            keep = modality_mask[:, m : m + 1].to(mean.dtype)
            feats.extend([mean * keep, std * keep])
        return ModelOutput(self.net(self.norm(torch.cat(feats, dim=-1))), None)


def build_model(cfg: ModelConfig) -> MMCL | LateFusionBaseline:
    """The model a config describes (MMCL or the late-fusion baseline)."""
    return MMCL(cfg) if cfg.kind == "mmcl" else LateFusionBaseline(cfg)


def _clone(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)
