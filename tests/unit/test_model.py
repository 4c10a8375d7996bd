from __future__ import annotations

import pytest
import torch

from mmcl.config import ModelConfig, TaskConfig, TaskKind
from mmcl.model import MMCL, Critic, LateFusionBaseline
from tests.conftest import batch_inputs

SMALL = {"input_dims": (12, 5, 9), "seq_len": 10, "d_model": 16, "num_heads": 4, "ff_dim": 32}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_reference_at_iemocap_dims() -> None:
    cfg = ModelConfig(input_dims=(300, 74, 35), seq_len=20, task=TaskConfig(kind=TaskKind.MULTITASK))
    assert count(MMCL(cfg)) == pytest.approx(2.16e6, rel=0.01)  # "about 2.16 M", as the paper reports
    assert count(Critic(cfg)) == pytest.approx(2.0e6, rel=0.02)  # "about 2 M"


def test_reference_defaults() -> None:
    cfg = ModelConfig()
    assert (cfg.d_model, cfg.num_heads, cfg.ff_dim, cfg.dropout) == (128, 4, 2048, 0.5)


@pytest.mark.parametrize(
    ("task", "k"),
    [(TaskConfig(), 1), (TaskConfig(kind=TaskKind.CLASSIFICATION, num_classes=5), 5),
     (TaskConfig(kind=TaskKind.MULTITASK), 8)],
)
@pytest.mark.parametrize("decoupling", ["paper", "calibrated"])
def test_output_shapes_per_task(task: TaskConfig, k: int, decoupling: str) -> None:
    model = MMCL(ModelConfig(**SMALL, task=task, decoupling=decoupling)).eval()
    out = model(*batch_inputs((12, 5, 9), 3, 10))
    assert out.logits.shape == (3, k)
    assert out.modality_weights is not None and out.modality_weights.shape == (3, 3)
    assert ((out.modality_weights > 0) & (out.modality_weights < 1)).all()


def test_batch_of_one() -> None:
    model = MMCL(ModelConfig(**SMALL)).eval()
    assert model(*batch_inputs((12, 5, 9), 1, 10)).logits.shape == (1, 1)


def test_padding_content_does_not_change_the_result() -> None:
    model = MMCL(ModelConfig(**SMALL, decoupling="calibrated")).eval()
    xs, masks, present = batch_inputs((12, 5, 9), 2, 10)
    masks = [m.clone() for m in masks]
    for m in masks:
        m[:, 6:] = False
    noisy = [x.clone() for x in xs]
    for x in noisy:
        x[:, 6:] = torch.randn_like(x[:, 6:]) * 100
    with torch.inference_mode():
        torch.testing.assert_close(model(xs, masks, present).logits, model(noisy, masks, present).logits)


def test_missing_modality_is_ignored_and_weighted_zero() -> None:
    model = MMCL(ModelConfig(**SMALL)).eval()
    xs, masks, present = batch_inputs((12, 5, 9), 2, 10)
    present[:, 2] = False
    other = [xs[0], xs[1], torch.randn_like(xs[2]) * 50]
    with torch.inference_mode():
        a, b = model(xs, masks, present), model(other, masks, present)
    torch.testing.assert_close(a.logits, b.logits)
    assert a.modality_weights is not None and (a.modality_weights[:, 2] == 0).all()


def test_gates_are_in_unit_interval_and_states_exposed() -> None:
    model = MMCL(ModelConfig(**SMALL)).eval()
    out = model(*batch_inputs((12, 5, 9), 2, 10))
    assert out.actions is not None and out.states is not None
    for a, s in zip(out.actions, out.states, strict=True):
        assert a.shape == (2, 10, 1) and ((a > 0) & (a < 1)).all()
        assert s.shape == (2, 10, 16)


def test_critic_scores_each_sample() -> None:
    cfg = ModelConfig(**SMALL)
    model, critic = MMCL(cfg).eval(), Critic(cfg).eval()
    xs, masks, present = batch_inputs((12, 5, 9), 3, 10)
    out = model(xs, masks, present)
    assert out.states is not None and out.actions is not None
    assert critic(out.states, out.actions, masks).shape == (3,)


def test_calibrated_aux_loss_is_finite_and_differentiable() -> None:
    model = MMCL(ModelConfig(**SMALL, decoupling="calibrated"))
    out = model(*batch_inputs((12, 5, 9), 4, 10), with_aux=True)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)
    out.aux_loss.backward()
    assert model.decoupling.log_inv_temperature.grad is not None


def test_baseline_single_modality_ignores_the_others() -> None:
    model = LateFusionBaseline(ModelConfig(**SMALL, kind="late_fusion", use_modalities=("audio",))).eval()
    xs, masks, present = batch_inputs((12, 5, 9), 2, 10)
    changed = [torch.randn_like(xs[0]), xs[1], torch.randn_like(xs[2])]
    with torch.inference_mode():
        torch.testing.assert_close(model(xs, masks, present).logits, model(changed, masks, present).logits)


def test_config_rejects_bad_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=130, num_heads=4)
