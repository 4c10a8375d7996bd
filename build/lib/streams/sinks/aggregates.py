"""The rule of a call's aggregates and alerts, as streams/sinks/lua/write_utterance.lua applies it in Redis.

Fields, for the call ("all") and per speaker role ("customer:count", ...): count, sum, mean, min, max, last, ewma;
per role also start_mean (first k), recent_mean (last k), shift = recent_mean - start_mean, neg (last m negatives
as a 0/1 string) and alert (1 while raised). The tests hold a Python fold of the same rule as their oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings


@dataclass(frozen=True)
class AggregateRule:
    """The parameters of the aggregates and the alert rule, passed to the Redis script with every write."""

    ewma_alpha: float
    shift_window: int
    alert_roles: tuple[str, ...]
    negative_below: float
    n: int
    m: int

    @property
    def name(self) -> str:
        """The alert rule in words, as an Alert message names it."""
        return f"negative (< {self.negative_below:g}) in {self.n} of the last {self.m}"


def aggregate_rule(settings: Settings) -> AggregateRule:
    """The rule the settings (MMCL_OUTPUT__*, MMCL_ALERT__*) describe."""
    alert = settings.alert
    return AggregateRule(settings.output.ewma_alpha, settings.output.shift_window, tuple(alert.roles),
                         alert.negative_below, alert.n, alert.m)
