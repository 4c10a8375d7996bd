"""Named training presets. `reference` is the published configuration; `quick` is sized for 2 CPU cores."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The reference implementation's values (arXiv 2501.12424): D=128, h=4, ff 2048, batch 128, lr 3e-4, up to 200 epochs.
    "reference": {"model": {}, "train": {}},
    # docs/benchmarks.md: an epoch costs ~10 s instead of ~40 s on 2 cores (feed-forward 2048 -> 256, batch 64),
    # and with lr 1e-3 the synthetic task gets within 2-3 points of its ideal Acc-2 in 15 epochs.
    "quick": {
        "model": {"ff_dim": 256},
        "train": {"epochs": 15, "batch_size": 64, "lr": 1e-3, "early_stop_patience": 6},
    },
}
