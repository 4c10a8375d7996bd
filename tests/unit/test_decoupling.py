"""The paper decoupling equals an independent numpy implementation of the published equations."""

from __future__ import annotations

import numpy as np
import torch

from mmcl.config import ModelConfig
from mmcl.decoupling import CalibratedDecoupling, PaperDecoupling
from mmcl.model import MMCL


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_paper(z: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Step 2 of the forward pass (docs/model.md), written from the published equations, in float64."""
    n = {k: v / np.linalg.norm(v, axis=-1, keepdims=True) for k, v in z.items()}

    def s(a: str, b: str) -> np.ndarray:
        return np.einsum("bid,bjd->bij", n[a], n[b])

    others = {"t": ("a", "v"), "a": ("t", "v"), "v": ("t", "a")}
    out = {}
    for m, (o1, o2) in others.items():
        a_m = np_softmax(np.minimum(s(m, o1), s(m, o2)))
        out[m] = (a_m @ z[m], np_softmax(1.0 - a_m) @ z[m])
    return out


def test_paper_decoupling_matches_the_equations() -> None:
    rng = np.random.default_rng(0)
    z = {k: rng.standard_normal((3, 7, 16)) for k in "tav"}
    expected = np_paper(z)
    zs = [torch.tensor(z[k], dtype=torch.float32) for k in "tav"]
    parts = PaperDecoupling()(zs, None, torch.ones(3, 3, dtype=torch.bool))
    for part, k in zip(parts, "tav", strict=True):
        np.testing.assert_allclose(part.common.numpy(), expected[k][0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(part.specific.numpy(), expected[k][1], atol=1e-5, rtol=1e-5)


def test_model_projection_then_decoupling_matches_the_equations() -> None:
    """Through the model: Z_m = X_m W_m^T + b_m, then the equations (full masks change nothing)."""
    torch.manual_seed(0)
    model = MMCL(ModelConfig(input_dims=(12, 5, 9), seq_len=6, d_model=16, num_heads=4, ff_dim=32)).eval()
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 6, d)).astype(np.float32) for d in (12, 5, 9)]
    z = {}
    for k, x, proj in zip("tav", xs, model.projections, strict=True):
        z[k] = x.astype(np.float64) @ proj.weight.detach().double().numpy().T + proj.bias.detach().double().numpy()
    expected = np_paper(z)
    masks = [torch.ones(2, 6, dtype=torch.bool)] * 3
    parts = model.decouple([torch.from_numpy(x) for x in xs], masks, torch.ones(2, 3, dtype=torch.bool))
    for part, k in zip(parts, "tav", strict=True):
        np.testing.assert_allclose(part.common.detach().numpy(), expected[k][0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(part.specific.detach().numpy(), expected[k][1], atol=1e-5, rtol=1e-5)


def _row_ratio(weights: torch.Tensor) -> float:
    w = weights.detach()
    return float((w.max(-1).values / w.min(-1).values).median())


def test_calibrated_specific_weights_are_not_uniform() -> None:
    torch.manual_seed(0)
    zs = [torch.randn(4, 50, 128) for _ in range(3)]
    present = torch.ones(4, 3, dtype=torch.bool)
    paper = PaperDecoupling()(zs, None, present)
    calibrated = CalibratedDecoupling(128, init_inv_temperature=10.0, max_inv_temperature=100.0)(zs, None, present)
    paper_ratio = _row_ratio(paper[0].specific_weights)
    calibrated_ratio = _row_ratio(calibrated[0].specific_weights)
    assert paper_ratio < 1.05  # the published softmax(1 - A) is nearly flat
    assert calibrated_ratio > 5 * paper_ratio


def test_missing_partner_is_ignored_in_the_minimum() -> None:
    """With audio missing, text's weights come from text-vision similarity alone."""
    torch.manual_seed(0)
    zs = [torch.randn(2, 5, 8) for _ in range(3)]
    present = torch.tensor([[True, False, True], [True, True, True]])
    parts = PaperDecoupling()(zs, None, present)
    tn, vn = (torch.nn.functional.normalize(z, dim=-1) for z in (zs[0], zs[2]))
    expected = torch.softmax(tn[0] @ vn[0].T, dim=-1)
    torch.testing.assert_close(parts[0].common_weights[0], expected)
