"""A fixed-size ring buffer of one-step transitions (s, a, r) per sample; s' = s * a is recomputed, not stored."""

from __future__ import annotations

import torch
from torch import Tensor


class ReplayBuffer:
    """A bounded buffer of actor-critic transitions, sampled uniformly."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._states: list[Tensor] = []  # per modality (capacity, L, D)
        self._actions: list[Tensor] = []  # per modality (capacity, L, 1)
        self._masks: list[Tensor] = []  # per modality (capacity, L)
        self._rewards = torch.empty(0)
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, states: list[Tensor], actions: list[Tensor], masks: list[Tensor], rewards: Tensor) -> None:
        """Add one batch of transitions, dropping the oldest beyond capacity."""
        if not self._states:
            # kept on the device of the model: no host round trip per step on a GPU
            dev = rewards.device
            self._states = [torch.zeros((self.capacity, *s.shape[1:]), dtype=s.dtype, device=dev) for s in states]
            self._actions = [torch.zeros((self.capacity, *a.shape[1:]), dtype=a.dtype, device=dev) for a in actions]
            self._masks = [torch.zeros((self.capacity, *m.shape[1:]), dtype=torch.bool, device=dev) for m in masks]
            self._rewards = torch.zeros(self.capacity, dtype=rewards.dtype, device=dev)
        n = rewards.shape[0]
        idx = ((torch.arange(n) + self._next) % self.capacity).to(self._rewards.device)
        for store, new in ((self._states, states), (self._actions, actions), (self._masks, masks)):
            for buf, t in zip(store, new, strict=True):
                buf[idx] = t.detach()
        self._rewards[idx] = rewards.detach()
        self._next = int((self._next + n) % self.capacity)
        self._size = min(self._size + n, self.capacity)

    def sample(self, batch_size: int, gen: torch.Generator) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        """A uniform sample of stored transitions."""
        idx = torch.randint(0, self._size, (min(batch_size, self._size),), generator=gen).to(self._rewards.device)
        return (
            [s[idx] for s in self._states],
            [a[idx] for a in self._actions],
            [m[idx] for m in self._masks],
            self._rewards[idx],
        )
