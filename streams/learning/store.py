"""The trainer's persistent, bounded state in one SQLite file: joined features, labels, the runs it made.

Features and labels meet here: a label is matched when the features of its utterance are in the store (a label
may come before its features are read; it waits up to `match_grace_s`). A second label for the same utterance
replaces the first. Both tables are bounded (age and count; the oldest go first), so the file does not grow
without end, and everything survives a restart of the trainer.
"""

from __future__ import annotations

import functools
import io
import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streams.messages import FeedbackLabel, JoinedFeatures
from streams.messages import now_ms as _now
from streams.wire import JoinedHeader

JoinedMeta = JoinedHeader | JoinedFeatures  # a joined-features record's header, either version

SCHEMA = """
CREATE TABLE IF NOT EXISTS features (
    utterance_id TEXT PRIMARY KEY, call_id TEXT, speaker TEXT, produced_at INTEGER, model_version TEXT,
    arrays BLOB, stored_at INTEGER);
CREATE INDEX IF NOT EXISTS features_age ON features (produced_at);
CREATE TABLE IF NOT EXISTS labels (
    utterance_id TEXT PRIMARY KEY, label REAL, source TEXT, labeled_at INTEGER, received_at INTEGER, raw BLOB,
    headers TEXT);
CREATE INDEX IF NOT EXISTS labels_time ON labels (labeled_at);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at INTEGER, finished_at INTEGER, outcome TEXT, reason TEXT,
    window_from INTEGER, window_to INTEGER, examples INTEGER, holdout INTEGER, current_version TEXT,
    candidate_version TEXT, metrics TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """Arrays -> .npz bytes (no pickles)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub takes **arrays for allow_pickle; plain arrays, read back with allow_pickle=False
    return buf.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    """The .npz bytes of `pack` -> arrays, read without unpickling."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclass(frozen=True)
class Example:
    """A labelled utterance with its features, for training."""

    utterance_id: str
    label: float
    labeled_at: int
    arrays: dict[str, np.ndarray]  # wire modality -> (T, D)


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: TrainingStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class TrainingStore:
    """The trainer's SQLite store: joined features, labels, run records and its own state."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # ingestion and the training thread share the connection
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    @_locked
    def close(self) -> None:
        """Commit and close the database."""
        self.db.close()

    # ingestion ---------------------------------------------------------------------------------------------
    @_locked
    def add_features(self, joined: JoinedMeta, arrays: dict[str, np.ndarray]) -> None:
        """Keep an utterance's joined features, as float32 (a later copy replaces an earlier one)."""
        packed = pack({m: np.asarray(a, dtype=np.float32) for m, a in arrays.items()})
        self.db.execute("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (joined.utterance_id, joined.call_id, joined.speaker, joined.produced_at, joined.model_version,
                         packed, _now()))

    @_locked
    def add_label(self, lab: FeedbackLabel, raw: bytes, headers: list[tuple[str, bytes]]) -> bool:
        """Store (or replace) a label. Returns True when it replaced an earlier one for the same utterance."""
        replaced = self.db.execute("SELECT 1 FROM labels WHERE utterance_id = ?", (lab.utterance_id,)).fetchone()
        hdrs = json.dumps([(k, v.decode("latin-1")) for k, v in headers])
        self.db.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (lab.utterance_id, lab.label, lab.source, lab.labeled_at, _now(), raw, hdrs))
        return replaced is not None

    @_locked
    def commit(self) -> None:
        """Make everything stored so far durable."""
        self.db.commit()

    @_locked
    def matched(self, utterance_id: str) -> bool:
        """Whether the utterance has both a label and features."""
        return self.db.execute("SELECT 1 FROM features WHERE utterance_id = ?", (utterance_id,)).fetchone() is not None

    @_locked
    def take_unmatched(self, older_than_s: float) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
        """Labels that waited longer than the grace period for features that never came: removed and returned."""
        cutoff = _now() - int(older_than_s * 1000)
        rows = self.db.execute(
            "SELECT l.utterance_id, l.raw, l.headers FROM labels l LEFT JOIN features f USING (utterance_id) "
            "WHERE f.utterance_id IS NULL AND l.received_at <= ?", (cutoff,)).fetchall()
        for utt, _, _ in rows:
            self.db.execute("DELETE FROM labels WHERE utterance_id = ?", (utt,))
        return [(utt, raw, [(k, v.encode("latin-1")) for k, v in json.loads(hdrs)]) for utt, raw, hdrs in rows]

    @_locked
    def prune(self, retention_s: int, max_features: int, max_examples: int) -> None:
        """Drop features past retention and the oldest beyond the size bounds."""
        self.db.execute("DELETE FROM features WHERE produced_at < ?", (_now() - retention_s * 1000,))
        self.db.execute("DELETE FROM features WHERE utterance_id IN (SELECT utterance_id FROM features "
                        "ORDER BY produced_at DESC LIMIT -1 OFFSET ?)", (max_features,))
        self.db.execute("DELETE FROM labels WHERE utterance_id IN (SELECT utterance_id FROM labels "
                        "ORDER BY labeled_at DESC LIMIT -1 OFFSET ?)", (max_examples,))

    # training ----------------------------------------------------------------------------------------------
    @_locked
    def size(self) -> int:
        """Labelled examples with features: the training set."""
        return int(self.db.execute("SELECT COUNT(*) FROM labels JOIN features USING (utterance_id)").fetchone()[0])

    @_locked
    def new_since(self, received_after: int) -> int:
        """Labelled examples whose label arrived after `received_after` (ms): what a run has not seen."""
        return int(self.db.execute("SELECT COUNT(*) FROM labels JOIN features USING (utterance_id) "
                                   "WHERE received_at > ?", (received_after,)).fetchone()[0])

    @_locked
    def last_received(self) -> int:
        """When the newest label arrived (ms), 0 without labels."""
        return int(self.db.execute("SELECT COALESCE(MAX(received_at), 0) FROM labels").fetchone()[0])

    @_locked
    def has_label(self, utterance_id: str) -> bool:
        """Whether the utterance has a label."""
        return self.db.execute("SELECT 1 FROM labels WHERE utterance_id = ?", (utterance_id,)).fetchone() is not None

    @_locked
    def examples(self) -> list[Example]:
        """Every labelled example, oldest label first."""
        rows = self.db.execute("SELECT l.utterance_id, l.label, l.labeled_at, f.arrays FROM labels l "
                               "JOIN features f USING (utterance_id) ORDER BY l.labeled_at, l.utterance_id").fetchall()
        return [Example(u, float(lab), int(t), unpack(blob)) for u, lab, t, blob in rows]

    @_locked
    def get_meta(self, key: str, default: Any = None) -> Any:
        """One of the trainer's own values, or `default`."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @_locked
    def set_meta(self, key: str, value: Any) -> None:
        """Store one of the trainer's own values."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @_locked
    def record_run(self, run: dict[str, Any]) -> int:
        """Record a run's outcome. -> its id."""
        cur = self.db.execute(
            "INSERT INTO runs (started_at, finished_at, outcome, reason, window_from, window_to, examples, holdout, "
            "current_version, candidate_version, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run["started_at"], run["finished_at"], run["outcome"], run.get("reason", ""), run.get("window_from"),
             run.get("window_to"), run.get("examples"), run.get("holdout"), run.get("current_version"),
             run.get("candidate_version"), json.dumps(run.get("metrics", {}))))
        self.db.commit()
        return int(cur.lastrowid or 0)

    @_locked
    def runs(self) -> list[dict[str, Any]]:
        """Every recorded run, oldest first."""
        cols = [d[1] for d in self.db.execute("PRAGMA table_info(runs)").fetchall()]
        out = []
        for row in self.db.execute("SELECT * FROM runs ORDER BY id").fetchall():
            d = dict(zip(cols, row, strict=True))
            d["metrics"] = json.loads(d["metrics"] or "{}")
            out.append(d)
        return out
