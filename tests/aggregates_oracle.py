"""The oracle for the Redis script's aggregates: the same rule as a Python fold over a call's results.

Order is the order results are written (the call's timeline stream), so a fold over the timeline reproduces the
call hash exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from streams.sinks.aggregates import AggregateRule
from streams.sinks.redis_store import call_key, timeline_key


def fold(entries: Iterable[tuple[str, float]], rule: AggregateRule) -> tuple[dict[str, float | str], list[int]]:
    """(speaker, score) in write order -> (call hash as Redis would hold it, indices of entries that raised an alert)."""
    h: dict[str, float | str] = {}
    alerts: list[int] = []
    for i, (speaker, score) in enumerate(entries):
        for p in ("all", speaker):
            _update(h, p, score, rule.ewma_alpha)
        start_n = int(h.get(f"{speaker}:start_n", 0))
        if start_n < rule.shift_window:
            h[f"{speaker}:start_n"] = start_n + 1
            h[f"{speaker}:start_sum"] = float(h.get(f"{speaker}:start_sum", 0.0)) + score
        recent = _floats(h.get(f"{speaker}:recent", ""))[-(rule.shift_window - 1):] if rule.shift_window > 1 else []
        recent.append(score)
        h[f"{speaker}:recent"] = ",".join(_fmt(x) for x in recent)
        start_mean = float(h[f"{speaker}:start_sum"]) / int(h[f"{speaker}:start_n"])
        recent_mean = sum(recent) / len(recent)
        h[f"{speaker}:start_mean"], h[f"{speaker}:recent_mean"] = start_mean, recent_mean
        h[f"{speaker}:shift"] = recent_mean - start_mean
        neg = (str(h.get(f"{speaker}:neg", "")) + ("1" if score < rule.negative_below else "0"))[-rule.m:]
        h[f"{speaker}:neg"] = neg
        if speaker in rule.alert_roles:
            hot = len(neg) >= rule.n and neg.count("1") >= rule.n
            if hot and h.get(f"{speaker}:alert", "0") != "1":
                alerts.append(i)
                h[f"{speaker}:alerts"] = int(h.get(f"{speaker}:alerts", 0)) + 1
            h[f"{speaker}:alert"] = "1" if hot else "0"
    return h, alerts


def _update(h: dict[str, float | str], p: str, score: float, alpha: float) -> None:
    n = int(h.get(f"{p}:count", 0)) + 1
    s = float(h.get(f"{p}:sum", 0.0)) + score
    h[f"{p}:count"], h[f"{p}:sum"], h[f"{p}:mean"] = n, s, s / n
    h[f"{p}:min"] = min(float(h.get(f"{p}:min", score)), score)
    h[f"{p}:max"] = max(float(h.get(f"{p}:max", score)), score)
    h[f"{p}:last"] = score
    h[f"{p}:ewma"] = score if n == 1 else alpha * score + (1 - alpha) * float(h[f"{p}:ewma"])


def _floats(text: str | float) -> list[float]:
    return [float(x) for x in str(text).split(",") if x]


def _fmt(x: float) -> str:
    return repr(float(x))


def assert_calls_match(redis: Any, calls: Mapping[str, Iterable[str]], rule: AggregateRule) -> None:
    """Each call's timeline in Redis holds exactly its utterances, once, and its hash equals the fold of that
    timeline (`redis`: a client that decodes responses)."""
    for call, utts in calls.items():
        timeline = redis.xrange(timeline_key(call))
        assert sorted(e["utterance_id"] for _, e in timeline) == sorted(utts), call
        got = redis.hgetall(call_key(call))
        want, _ = fold([(e["speaker"], float(e["score"])) for _, e in timeline], rule)
        for key, value in want.items():
            if isinstance(value, str) and key.endswith(":recent"):
                assert np.allclose([float(x) for x in got[key].split(",")], [float(x) for x in value.split(",")])
            elif isinstance(value, str):
                assert got[key] == value, (call, key)
            else:
                assert abs(float(got[key]) - float(value)) < 1e-9, (call, key)
