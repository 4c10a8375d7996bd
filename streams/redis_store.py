"""Redis layout (DESIGN.md): per utterance, per call, the call timeline, the live feed and alerts. C = call id,
U = utterance id; the braces are a Redis Cluster hash tag so one call's keys share a slot."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import redis
import redis.asyncio as aioredis

from streams.aggregates import AggregateRule
from streams.messages import Prediction
from streams.settings import OutputSettings, RedisSettings

FEED, ALERTS = "mmcl:feed", "mmcl:alerts"
WRITE_UTTERANCE = files("streams").joinpath("lua/write_utterance.lua").read_text()


def utt_key(c: str, u: str) -> str:
    return f"mmcl:{{{c}}}:utt:{u}"


def call_key(c: str) -> str:
    return f"mmcl:{{{c}}}:call"


def timeline_key(c: str) -> str:
    return f"mmcl:{{{c}}}:timeline"


def redis_kwargs(r: RedisSettings) -> dict[str, Any]:
    kw: dict[str, Any] = {"socket_timeout": r.socket_timeout_s, "socket_connect_timeout": r.socket_timeout_s,
                          "decode_responses": True}
    if r.username:
        kw["username"] = r.username
    if r.password:
        kw["password"] = r.password.get_secret_value()
    if r.ssl_ca_certs:
        kw["ssl_ca_certs"] = str(r.ssl_ca_certs)
    return kw


def async_client(r: RedisSettings) -> aioredis.Redis:
    return aioredis.Redis.from_url(r.url, **redis_kwargs(r))


def sync_client(r: RedisSettings) -> redis.Redis:
    return redis.Redis.from_url(r.url, **redis_kwargs(r))


def call_of(p: Prediction) -> str:
    return p.call_id or p.utterance_id  # an utterance without a call is its own call


def hash_fields(p: Prediction) -> dict[str, str]:
    d = p.model_dump(mode="json")
    d["call_id"] = call_of(p)
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in d.items() if v is not None}


class ResultWriter:
    """Writes a batch of predictions in one pipeline: one atomic, idempotent script call per utterance."""

    def __init__(self, client: aioredis.Redis, out: OutputSettings, rule: AggregateRule) -> None:
        self.client, self.out, self.rule = client, out, rule
        self.script = client.register_script(WRITE_UTTERANCE)

    async def write(self, preds: list[Prediction], now_ms: int) -> list[tuple[bool, str]]:
        """-> per prediction (new?, alert JSON or ''). Raises redis errors; the caller retries the whole batch."""
        o, r = self.out, self.rule
        async with self.client.pipeline(transaction=False) as pipe:  # released even when the write fails
            for p in preds:
                c = call_of(p)
                await self.script(
                    keys=[utt_key(c, p.utterance_id), call_key(c), timeline_key(c), FEED, ALERTS],
                    args=[json.dumps(hash_fields(p)), repr(float(p.score)), p.speaker, o.utterance_ttl_s, o.call_ttl_s,
                          o.timeline_maxlen, o.feed_maxlen, o.alerts_maxlen, repr(o.ewma_alpha), o.shift_window,
                          "1" if p.speaker in r.alert_roles else "0", repr(r.negative_below), r.n, r.m, now_ms, r.name],
                    client=pipe)
            replies = await pipe.execute()
        return [(status == "new", alert) for status, alert in replies]


def read_call(client: redis.Redis, call_id: str, last: int = 50) -> dict[str, Any]:
    """A call's aggregates and its latest timeline entries, for `mmcl results` and tests."""
    agg = client.hgetall(call_key(call_id))
    timeline = client.xrevrange(timeline_key(call_id), count=last)
    return {"call_id": call_id, "aggregates": agg, "timeline": [dict(fields, id=i) for i, fields in reversed(timeline)]}
