"""The int8 CPU network computes what the fp32 layers compute, to quantization error, and is chosen only where it runs.
Its accuracy on a trained model is in test_reduced_precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmcl.checkpoint import FeatureProfile, save_checkpoint
from mmcl.config import ModelConfig
from mmcl.errors import ConfigError
from mmcl.int8_serving import Int8EncoderLayer, Int8Linear, Int8SelfAttention, int8_supported
from mmcl.model import LateFusionBaseline, build_model
from mmcl.predictor import Predictor, resolve_precision
from streams.learning.follower import load_predictor
from streams.settings import ModelSettings

needs_int8 = pytest.mark.skipif(not int8_supported(), reason="this CPU lacks VNNI or PyTorch its oneDNN engine")
SMALL = {"input_dims": (12, 5, 9), "seq_len": 10, "d_model": 16, "num_heads": 4, "ff_dim": 32}


def padded(b: int, length: int, d: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    valid = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return torch.randn(b, length, d, generator=g), valid


@needs_int8
def test_int8_linear_matches_fp32_to_quantization_error() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    x = torch.randn(40, 7, 64)
    for relu in (False, True):
        want = linear(x).relu() if relu else linear(x)
        got = Int8Linear.of(linear, relu=relu)(x)
        assert got.shape == want.shape
        assert (got - want).abs().max() < 0.02 * want.abs().max()
        assert not torch.equal(got, want)  # it is int8 arithmetic, not the fp32 layer


@needs_int8
@pytest.mark.parametrize("lengths", [[12, 3, 7, 12, 1, 9], [12] * 6], ids=["padded", "all-valid"])
def test_int8_encoder_layer_matches_the_fp32_layer_on_valid_steps(lengths: list[int]) -> None:
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(32, 4, 64, 0.1, batch_first=True).eval()
    x, valid = padded(6, 12, 32, lengths)
    with torch.inference_mode():
        want = layer(x, src_key_padding_mask=~valid)
        got = Int8EncoderLayer(layer)(x, ~valid)
    assert (got[valid] - want[valid]).abs().max() < 0.05  # LayerNorm output: unit scale
    assert torch.all(got[~valid] == 0)


@needs_int8
def test_int8_attention_ignores_padded_keys() -> None:
    torch.manual_seed(2)
    attn = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x, valid = padded(4, 10, 32, [10, 2, 6, 1])
    with torch.inference_mode():
        want, _ = attn(x, x, x, key_padding_mask=~valid, need_weights=False)
        got = Int8SelfAttention(attn)(x, valid)
        x2 = x.clone()
        x2[~valid] = 100.0  # garbage at padded steps: it must not set the activations' quantization scale
        again = Int8SelfAttention(attn)(x2, valid)
    assert (got[valid] - want[valid]).abs().max() < 0.02 * want[valid].abs().max()
    assert torch.equal(again[valid], got[valid])


def test_auto_precision_is_what_the_device_and_model_run() -> None:
    mmcl = build_model(ModelConfig(**SMALL)).eval()
    late = build_model(ModelConfig(**SMALL, kind="late_fusion")).eval()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu, mmcl) == ("int8" if int8_supported() else "fp32")
    assert resolve_precision("auto", cpu, late) == "fp32"
    assert resolve_precision("auto", cuda, mmcl) == "bf16"
    assert resolve_precision("fp32", cpu, mmcl) == "fp32" and resolve_precision("bf16", cpu, late) == "bf16"
    for device, model in ((cpu, late), (cuda, mmcl)):
        with pytest.raises(ValueError, match="int8 runs the MMCL network on a CPU"):
            resolve_precision("int8", device, model)


@needs_int8
def test_int8_predictor_keeps_the_fp32_model_and_the_process_engine(tmp_path: Path) -> None:
    cfg = ModelConfig(**SMALL)
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "ckpt", model, cfg, FeatureProfile(cfg.input_dims, {}), {})
    engine = torch.backends.quantized.engine
    p = Predictor.from_checkpoint(path, device="cpu", precision="int8")
    assert torch.backends.quantized.engine == engine  # packing chose its engine without leaving it set
    assert p.precision == "int8" and p.checkpoint.model is not p.model
    assert isinstance(p.checkpoint.model.temporal[0], nn.TransformerEncoderLayer)
    rng = np.random.default_rng(0)
    batch = [{"text": rng.standard_normal((4, 12)).astype(np.float32), "audio": None, "vision": None},
             {"text": rng.standard_normal((10, 12)).astype(np.float32),
              "audio": rng.standard_normal((7, 5)).astype(np.float32),
              "vision": rng.standard_normal((3, 9)).astype(np.float32)}]
    got = p.predict(batch)
    want = Predictor.from_checkpoint(path, device="cpu", precision="fp32").predict(batch)
    np.testing.assert_allclose(got.scores, want.scores, atol=0.01)
    assert got.modality_weights is not None and got.modality_weights[0, 1:].tolist() == [0, 0]


def test_the_worker_refuses_int8_for_a_model_it_cannot_quantize_in_one_line(tmp_path: Path) -> None:
    cfg = ModelConfig(**SMALL, kind="late_fusion")
    model = build_model(cfg).eval()
    assert isinstance(model, LateFusionBaseline)
    path = save_checkpoint(tmp_path / "ckpt", model, cfg, FeatureProfile(cfg.input_dims, {}), {})
    with pytest.raises(ConfigError, match=r"^MMCL_MODEL__PRECISION=int8: int8 runs the MMCL network on a CPU"):
        load_predictor(path, ModelSettings(device="cpu", precision="int8"))
