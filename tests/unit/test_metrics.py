"""Field-standard metrics, checked against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mmcl.metrics import mosi_metrics, multitask_metrics, sims_metrics, weighted_f1


def test_weighted_f1_by_hand() -> None:
    # class 0: tp 1, fp 1, fn 1 -> f1 0.5 (support 2); class 1: tp 1, fp 1, fn 1 -> 0.5 (support 2)
    assert weighted_f1(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    # class 0 support 3: tp 3, fp 1 -> f1 6/7; class 1 support 1: tp 0 -> 0; weighted 3/4 * 6/7
    assert weighted_f1(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])) == pytest.approx(0.75 * 6 / 7)


def test_mosi_metrics_with_zero_and_half_labels() -> None:
    truth = np.array([0.0, 1.5, -0.5, 2.5, -3.0])
    pred = np.array([-0.2, 0.5, 0.4, 2.6, -2.4])
    m = mosi_metrics(pred, truth)
    # has0: truth>=0 [T,T,F,T,F]; pred>=0 [F,T,T,T,F] -> 3/5
    assert m["acc2_has0"] == pytest.approx(0.6)
    # non0 drops the zero: truth>0 [T,F,T,F]; pred>0 [T,T,T,F] -> 3/4
    assert m["acc2_non0"] == pytest.approx(0.75)
    # non0 F1: class True (support 2): tp 2, fp 1 -> 0.8; class False (support 2): tp 1, fn 1 -> 2/3
    assert m["f1_non0"] == pytest.approx((0.8 + 2 / 3) / 2)
    # Acc-7, half to even: truth round [0, 2, -0, 2, -3]; pred round [-0, 0, 0, 3, -2] -> idx 0 and 2
    assert m["acc7"] == pytest.approx(2 / 5)
    # Acc-5 clips to [-2, 2]: truth [0, 2, -0, 2, -2]; pred [-0, 0, 0, 2, -2] -> idx 0, 2, 3, 4
    assert m["acc5"] == pytest.approx(4 / 5)
    assert m["mae"] == pytest.approx(np.mean([0.2, 1.0, 0.9, 0.1, 0.6]))
    assert m["corr"] == pytest.approx(np.corrcoef(pred, truth)[0, 1])


def test_round_half_to_even_matters() -> None:
    # 0.5 rounds to 0 and 1.5 to 2 (numpy), not 1 and 2 (half up)
    m = mosi_metrics(np.array([0.0, 2.0]), np.array([0.5, 1.5]))
    assert m["acc7"] == pytest.approx(1.0)


def test_sims_metrics_by_hand() -> None:
    truth = np.array([-0.8, -0.05, 0.0, 0.3, 1.2])
    pred = np.array([-0.6, 0.05, -0.2, 0.9, 0.75])
    m = sims_metrics(pred, truth)
    # 2-class [-1,0] vs (0,1]: truth [0,0,0,1,1]; pred [0,1,0,1,1] -> 4/5
    assert m["acc2"] == pytest.approx(0.8)
    # 3-class at +-0.1: truth [0,1,1,2,2]; pred [0,1,0,2,2] -> 4/5
    assert m["acc3"] == pytest.approx(0.8)
    # 5-class at -0.7,-0.1,0.1,0.7: truth [0,2,2,3,4]; pred [1,2,1,4,4] -> 2/5
    assert m["acc5"] == pytest.approx(0.4)
    # MAE on clipped values: truth 1.2 -> 1.0
    assert m["mae"] == pytest.approx(np.mean([0.2, 0.1, 0.2, 0.6, 0.25]))


def test_iemocap_per_emotion() -> None:
    names = ("neutral", "happy", "sad", "angry")
    truth = np.array([[1, 0, 0, 0], [0, 1, 0, 1]])
    logits = np.zeros((2, 4, 2))
    logits[0, :, 0] = 1  # predicts all absent
    logits[1, :, 1] = 1  # predicts all present
    m = multitask_metrics(logits.reshape(2, 8), truth, names)
    assert m["neutral_acc"] == pytest.approx(0.0)
    assert m["happy_acc"] == pytest.approx(1.0)
    assert m["sad_acc"] == pytest.approx(0.5)
    assert m["angry_acc"] == pytest.approx(1.0)
    assert m["mean_acc"] == pytest.approx(0.625)
