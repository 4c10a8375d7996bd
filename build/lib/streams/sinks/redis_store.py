"""Redis layout (docs/streaming.md#redis): per utterance, per call, the call timeline, the live feed and alerts. C = call id,
U = utterance id; the braces are a Redis Cluster hash tag so one call's keys share a slot."""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from streams.errors import ServiceError, SinkRefused, classify, from_redis_error
from streams.messages import Prediction
from streams.settings import OutputSettings, RedisSettings
from streams.sinks.aggregates import AggregateRule

FEED, ALERTS = "mmcl:feed", "mmcl:alerts"


@functools.cache
def write_script() -> str:
    """The Lua script that writes one utterance's result (read once, on first use)."""
    return files("streams.sinks").joinpath("lua/write_utterance.lua").read_text()


def utt_key(call_id: str, utterance_id: str) -> str:
    """The hash of one utterance's result."""
    return f"mmcl:{{{call_id}}}:utt:{utterance_id}"


def call_key(call_id: str) -> str:
    """The hash of a call's aggregates."""
    return f"mmcl:{{{call_id}}}:call"


def timeline_key(call_id: str) -> str:
    """The stream of a call's results, in write order."""
    return f"mmcl:{{{call_id}}}:timeline"


def redis_kwargs(redis_conf: RedisSettings) -> dict[str, Any]:
    """Connection options for redis-py from the settings (credentials, TLS, timeouts)."""
    kw: dict[str, Any] = {"socket_timeout": redis_conf.socket_timeout_s, "socket_connect_timeout": redis_conf.socket_timeout_s,
                          "decode_responses": True}
    if redis_conf.username:
        kw["username"] = redis_conf.username
    if redis_conf.password:
        kw["password"] = redis_conf.password.get_secret_value()
    if redis_conf.ssl_ca_certs:
        kw["ssl_ca_certs"] = str(redis_conf.ssl_ca_certs)
    return kw


def async_client(redis_conf: RedisSettings) -> aioredis.Redis:
    """A redis.asyncio client; make it on the loop that uses it."""
    return aioredis.Redis.from_url(redis_conf.url.get_secret_value(), **redis_kwargs(redis_conf))


def sync_client(redis_conf: RedisSettings) -> redis.Redis:
    """A blocking client, replies decoded as str."""
    return redis.Redis.from_url(redis_conf.url.get_secret_value(), **redis_kwargs(redis_conf))


def call_of(prediction: Prediction) -> str:
    """The call an utterance's result is filed under (itself when it has no call)."""
    return prediction.call_id or prediction.utterance_id  # an utterance without a call is its own call


def hash_fields(prediction: Prediction) -> dict[str, str]:
    """A prediction as the string fields of its Redis hash."""
    d = prediction.model_dump(mode="json")
    d["call_id"] = call_of(prediction)
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in d.items() if v is not None}


_JSON_FIELDS = ("probabilities", "modality_weights", "modalities", "masked")


def stored_prediction(fields: dict[str, str]) -> Prediction:
    """A Prediction back from its utterance hash (the inverse of hash_fields)."""
    d: dict[str, Any] = {k: v for k, v in fields.items() if k in Prediction.model_fields and k != "schema_version"}
    for k in _JSON_FIELDS:
        if k in d:
            d[k] = json.loads(d[k])
    d.setdefault("call_id", None)
    return Prediction.model_validate(d)


def _stored_or_none(stored: str) -> Prediction | None:
    """The stored result of a re-delivered utterance, or None when it cannot be read back (written by a version of
    the service with other fields): the new prediction is published then, as before."""
    try:
        return stored_prediction(json.loads(stored))
    except ValueError:  # pydantic's ValidationError and json's JSONDecodeError are ValueErrors
        return None


def _modalities_or_none(value: str | None) -> list[str] | None:
    try:
        got = json.loads(value) if value is not None else None
    except ValueError:
        return None  # not a hash this service wrote
    return got if isinstance(got, list) else None


@dataclass(frozen=True)
class Written:
    """What writing one utterance's result did."""

    new: bool  # False: Redis already had this utterance's result (a re-delivery); nothing changed
    alert: str  # the Alert JSON this utterance raised (now or the first time), or ''
    stored: Prediction | None  # for a re-delivery: the result Redis holds (what is published again)


class ResultWriter:
    """Writes a batch of predictions in one pipeline: one atomic, idempotent script call per utterance."""

    def __init__(self, client: aioredis.Redis, out: OutputSettings, rule: AggregateRule) -> None:
        self.client, self.out, self.rule = client, out, rule
        self.script = client.register_script(write_script())

    async def write(self, preds: list[Prediction], now_ms: int) -> list[Written | ServiceError]:
        """-> per prediction: what happened, or why it was not written (a script error for that utterance, e.g. a
        key another program made with another type). Raises a ServiceError when the whole pipeline failed."""
        o, r = self.out, self.rule
        try:
            async with self.client.pipeline(transaction=False) as pipe:  # released even when the write fails
                for p in preds:
                    c = call_of(p)
                    await self.script(
                        keys=[utt_key(c, p.utterance_id), call_key(c), timeline_key(c), FEED, ALERTS],
                        args=[json.dumps(hash_fields(p)), repr(float(p.score)), p.speaker, o.utterance_ttl_s,
                              o.call_ttl_s, o.timeline_maxlen, o.feed_maxlen, o.alerts_maxlen, repr(o.ewma_alpha),
                              o.shift_window, "1" if p.speaker in r.alert_roles else "0", repr(r.negative_below), r.n,
                              r.m, now_ms, r.name],
                        client=pipe)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as e:
            raise classify(e) from e
        out: list[Written | ServiceError] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                out.append(classify(reply))
                continue
            status, alert, stored = reply
            out.append(Written(status == "new", alert, _stored_or_none(stored) if status == "dup" else None))
        return out

    async def result_modalities(self, keys: list[tuple[str | None, str]]) -> list[list[str] | None]:
        """For (call id, utterance id) pairs: the modalities of the result Redis holds, or None when it has none."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for call, utt in keys:
                    pipe.hget(utt_key(call or utt, utt), "modalities")
                replies = await pipe.execute()
        except Exception as e:
            raise classify(e) from e
        return [_modalities_or_none(v) for v in replies]


def check_access(client: redis.Redis, out: OutputSettings, rule: AggregateRule) -> str | None:
    """At start-up: are the credentials and permissions good for everything the worker does? Runs the write script
    on a probe utterance in keys of its own (mmcl:{<probe>}:...), then deletes them. Raises SinkRefused on a refusal;
    returns a warning when Redis does not answer (the worker then starts, and waits for it like for any outage)."""
    probe = f"mmcl-probe-{uuid.uuid4().hex[:12]}"
    keys = [utt_key(probe, "u"), call_key(probe), timeline_key(probe), f"mmcl:{{{probe}}}:feed",
            f"mmcl:{{{probe}}}:alerts"]
    p = Prediction(utterance_id="u", call_id=probe, speaker="unknown", score=0.0, label="neutral", modalities=["text"],
                   model_version="probe", latency_ms=0.0, produced_at=0, predicted_at=0)
    try:
        client.register_script(write_script())(
            keys=keys, args=[json.dumps(hash_fields(p)), "0.0", p.speaker, 60, 60, 10, 10, 10, repr(out.ewma_alpha),
                             out.shift_window, "0", repr(rule.negative_below), rule.n, rule.m, 0, rule.name])
        client.delete(*keys)
    except redis.RedisError as e:
        err = from_redis_error(e)
        if isinstance(err, SinkRefused):
            raise err from None
        return f"Redis is not usable at start-up ({err}); the worker waits for it"
    return None


def read_call(client: redis.Redis, call_id: str, last: int = 50) -> dict[str, Any]:
    """A call's aggregates and its latest timeline entries, for `mmcl results` and tests."""
    # a sync client answers synchronously; redis-py's stubs type both clients' replies as one union
    agg = cast("dict[str, str]", client.hgetall(call_key(call_id)))
    timeline = cast("list[tuple[str, dict[str, str]]]", client.xrevrange(timeline_key(call_id), count=last))
    return {"call_id": call_id, "aggregates": agg, "timeline": [dict(fields, id=i) for i, fields in reversed(timeline)]}
