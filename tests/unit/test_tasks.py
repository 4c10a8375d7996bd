from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcl.config import TaskConfig, TaskKind
from mmcl.replay import ReplayBuffer
from mmcl.tasks import decode, reward, targets_from_scores


def test_reward_pairs_each_sample_with_its_own_label() -> None:
    """Reference defect 2: a wrong reshape paired predictions with other samples' labels."""
    task = TaskConfig(kind=TaskKind.MULTITASK)
    logits = torch.zeros(2, 8)
    logits.view(2, 4, 2)[0, :, 1] = 10.0  # sample 0: every emotion "present", confidently
    y = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    r = reward(task, logits, y)
    assert r[0] == pytest.approx(4.0, abs=1e-3)  # four sub-tasks, each p(true) ~ 1
    assert r[1] == pytest.approx(2.0)  # uniform logits: 0.5 each


def test_classification_and_regression_reward() -> None:
    task = TaskConfig(kind=TaskKind.CLASSIFICATION, num_classes=3)
    logits = torch.tensor([[0.0, 0.0, 10.0], [10.0, 0.0, 0.0]])
    r = reward(task, logits, torch.tensor([2, 2]))
    assert r[0] == pytest.approx(1.0, abs=1e-3) and r[1] < 1e-3
    reg = reward(TaskConfig(), torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 1.0]))
    assert reg[0] == pytest.approx(1.0) and reg[1] == pytest.approx(np.exp(-1.0))


def test_targets_from_scores() -> None:
    s = np.array([-2.6, -0.4, 0.0, 0.4, 2.9])
    two = TaskConfig(kind=TaskKind.CLASSIFICATION, num_classes=2)
    three = TaskConfig(kind=TaskKind.CLASSIFICATION, num_classes=3)
    seven = TaskConfig(kind=TaskKind.CLASSIFICATION, num_classes=7)
    np.testing.assert_array_equal(targets_from_scores(two, s), [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(targets_from_scores(three, s), [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(targets_from_scores(seven, s), [0, 3, 3, 3, 6])


def test_decode_regression_labels() -> None:
    d = decode(TaskConfig(), torch.tensor([[-2.0], [0.1], [5.0]]))
    np.testing.assert_allclose(d.scores, [-2.0, 0.1, 3.0])  # clamped to the range
    np.testing.assert_array_equal(d.label_ids, [0, 1, 2])
    assert d.probabilities is None


def test_replay_buffer_wraps_around() -> None:
    buf = ReplayBuffer(capacity=3)
    for k in range(2):
        s = [torch.full((2, 4, 5), float(k))] * 3
        a = [torch.full((2, 4, 1), 0.5)] * 3
        m = [torch.ones(2, 4, dtype=torch.bool)] * 3
        buf.push(s, a, m, torch.tensor([k, k], dtype=torch.float32))
    assert len(buf) == 3
    states, actions, masks, rewards = buf.sample(10, torch.Generator().manual_seed(0))
    assert rewards.shape == (3,)
    # the first write's first slot was overwritten: rewards come only from the last three pushed
    assert set(buf._rewards.tolist()) == {0.0, 1.0} and buf._rewards.tolist().count(1.0) == 2
    assert states[0].shape == (3, 4, 5) and actions[0].shape == (3, 4, 1) and masks[0].dtype == torch.bool
