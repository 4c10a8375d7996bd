from __future__ import annotations

import numpy as np

from mmcl.sequence import detect_padding_side, fit_length, resample_mean, valid_lengths


def test_detect_and_measure_padding() -> None:
    x = np.ones((3, 6, 2), np.float32)
    x[0, :2] = 0
    x[1, :4] = 0
    assert detect_padding_side(x) == "front"
    np.testing.assert_array_equal(valid_lengths(x, "front"), [4, 2, 6])
    y = x[:, ::-1]
    assert detect_padding_side(y) == "back"
    np.testing.assert_array_equal(valid_lengths(y, "back"), [4, 2, 6])
    assert detect_padding_side(np.ones((2, 4, 1))) == "none"


def test_fit_pads_short_and_moves_front_padding_to_the_back() -> None:
    x = np.zeros((1, 5, 1), np.float32)
    x[0, 2:, 0] = [1, 2, 3]
    out, mask = fit_length(x, np.array([3]), "front", 4)
    np.testing.assert_array_equal(out[0, :, 0], [1, 2, 3, 0])
    np.testing.assert_array_equal(mask[0], [True, True, True, False])


def test_fit_resamples_long_by_segment_means() -> None:
    rows = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_allclose(resample_mean(rows, 5)[:, 0], [0.5, 2.5, 4.5, 6.5, 8.5])
    out, mask = fit_length(rows[None], np.array([10]), "back", 5)
    assert mask.all() and out.shape == (1, 5, 1)


def test_empty_sequence_is_all_masked() -> None:
    out, mask = fit_length(np.zeros((1, 3, 2), np.float32), np.array([0]), "back", 4)
    assert not mask.any() and not out.any()
