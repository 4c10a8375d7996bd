"""What a producer is told of its utterances: the dead-letter reasons in a line, and utterance ids read back from a
dead letter's original bytes in either wire version."""

from __future__ import annotations

import numpy as np

from streams.local.outcomes import Outcomes, report_outcomes, utterance_of
from streams.wire import Features, encode_features


def test_an_utterance_id_is_read_from_either_wire_version_or_not_at_all() -> None:
    msg = Features("u-7", "text", np.zeros((3, 4), np.float32), 1, call_id="c")
    assert utterance_of(encode_features(msg, "v2", "float16")) == "u-7"
    assert utterance_of(encode_features(msg, "v1")) == "u-7"
    assert utterance_of(b"") is None and utterance_of(None) is None
    assert utterance_of(b"not a message") is None and utterance_of(b'["a list"]') is None
    assert utterance_of(encode_features(msg, "v2", "float16")[:12]) is None  # cut to fit the topic


def test_the_reasons_are_counted_per_utterance_with_the_first_error() -> None:
    out = Outcomes(scored={"u1"}, dead={"u2": [("incomplete", "no audio part within 2 s")] * 2,
                                        "u3": [("incomplete", "no audio part within 3 s"), ("late", "")]},
                   pending={"u4"})
    assert out.reasons() == {"incomplete": 2, "late": 1}
    assert out.describe() == "incomplete x2 (no audio part within 2 s), late x1"
    assert report_outcomes(out, 40, 4) == 1
    assert report_outcomes(Outcomes(scored={"u1"}), 40, 1) == 0
