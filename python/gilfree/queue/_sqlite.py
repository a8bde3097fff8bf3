"""The embedded backend: one SQLite file in WAL mode (the standard library's sqlite3; no server).

Tables (several queues may share a file):

- ``gf_msg``: every message put and not yet finished by every group (id, queue, key, body, not_before,
  created). ``id`` only grows: it is the put order.
- ``gf_group``: each consumer group of a queue and its ``cursor``, the highest message id it has taken
  into its own hands. A new group starts before the oldest message the queue still holds.
- ``gf_pending``: a group's messages past its cursor that are not finished: leased to a consumer
  (state 1, ``due`` = the lease's end), waiting for a retry or a delay (state 2, ``due`` = when it may go
  out), or dead (state 3). ``attempt`` counts deliveries; ``token`` names the current lease, so an ack
  from a consumer whose lease ran out and went to another is refused (LeaseLost).

A message leaves ``gf_msg`` when no group still needs it: every group's cursor has passed it and no
pending row (leased, waiting or dead) refers to it. Every change is one transaction (``BEGIN
IMMEDIATE``): a producer or consumer killed at any instant leaves all of its change or none.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
import weakref
from typing import Any, Callable, Sequence, TypeVar

from ._common import LeaseLost, Taken

R = TypeVar("R")

SCHEMA = """
CREATE TABLE IF NOT EXISTS gf_meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gf_msg(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL, key TEXT, body BLOB NOT NULL, not_before REAL NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS gf_msg_queue ON gf_msg(queue, id);
CREATE TABLE IF NOT EXISTS gf_group(
    queue TEXT NOT NULL, grp TEXT NOT NULL, cursor INTEGER NOT NULL, PRIMARY KEY(queue, grp));
CREATE TABLE IF NOT EXISTS gf_pending(
    queue TEXT NOT NULL, grp TEXT NOT NULL, msg_id INTEGER NOT NULL, state INTEGER NOT NULL,
    due REAL NOT NULL, attempt INTEGER NOT NULL, token INTEGER, consumer TEXT, error TEXT,
    PRIMARY KEY(queue, grp, msg_id));
CREATE INDEX IF NOT EXISTS gf_pending_due ON gf_pending(queue, grp, state, due);
CREATE INDEX IF NOT EXISTS gf_pending_msg ON gf_pending(msg_id);
CREATE TRIGGER IF NOT EXISTS gf_settle AFTER DELETE ON gf_pending BEGIN
    DELETE FROM gf_msg WHERE id=OLD.msg_id AND NOT EXISTS (SELECT 1 FROM gf_pending WHERE msg_id=OLD.msg_id)
        AND NOT EXISTS (SELECT 1 FROM gf_group WHERE queue=OLD.queue AND cursor<OLD.msg_id);
END;
"""
SCHEMA_VERSION = "1"
LEASED, WAITING, DEAD = 1, 2, 3
BUSY_SLICE = 0.02  # a busy database is retried in slices this long (Ctrl-C gets through between them)


class _Holder:
    """A thread's connection: closed when the thread ends (and its threading.local entry with it)."""

    __slots__ = ("conn", "backend", "__weakref__")

    def __init__(self, conn: sqlite3.Connection, backend: SQLiteBackend) -> None:
        self.conn = conn
        self.backend = weakref.ref(backend)

    def __del__(self) -> None:
        b = self.backend()
        if b is not None and b._pid == os.getpid():
            b._forget(id(self))


class SQLiteBackend:
    """What DurableQueue needs from a store, on SQLite."""

    kind = "sqlite"

    def __init__(self, path: str, queue: str, sync: str) -> None:
        self.path, self.queue, self.sync = path, queue, sync
        self._local = threading.local()
        self._all: dict[int, sqlite3.Connection] = {}  # every open connection, by its holder's id
        self._lock = threading.Lock()
        self._pid = os.getpid()
        try:
            self._write(self._setup)
        except BaseException:
            self.close()
            raise

    # ---- connections: one per thread (and per process: a forked child opens its own) ----------------

    def _conn(self) -> sqlite3.Connection:
        h: _Holder | None = getattr(self._local, "holder", None)
        if h is not None and self._pid == os.getpid():
            return h.conn
        if self._pid != os.getpid():  # a forked child: the parent's connections are not ours to use
            self._local = threading.local()
            self._all = {}
            self._lock = threading.Lock()
            self._pid = os.getpid()
        try:
            c = sqlite3.connect(self.path, timeout=BUSY_SLICE, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as e:
            raise ValueError(f"url: {self.path!r} cannot be opened as an SQLite database ({e})") from None
        try:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
        except sqlite3.DatabaseError as e:
            c.close()
            raise ValueError(f"url: {self.path!r} is not a usable SQLite database ({e})") from None
        # The thread's holder goes when the thread ends (its threading.local entry is cleared then), and
        # closes the connection: threads that come and go leave no connection (and no file) open.
        h = _Holder(c, self)
        self._local.holder = h
        with self._lock:
            self._all[id(h)] = c
        return c

    def _forget(self, key: int) -> None:
        with self._lock:
            c = self._all.pop(key, None)
        if c is not None:
            try:
                c.close()
            except sqlite3.Error:
                pass

    def _setup(self, c: sqlite3.Connection) -> None:
        try:
            for statement in _statements(SCHEMA):
                c.execute(statement)
        except sqlite3.DatabaseError as e:
            raise ValueError(f"url: {self.path!r} is not a usable SQLite database ({e})") from None
        row = c.execute("SELECT v FROM gf_meta WHERE k='schema'").fetchone()
        if row is None:
            c.execute("INSERT INTO gf_meta VALUES('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise ValueError(f"url: {self.path!r} holds gilfree queue schema {row[0]}, this version reads "
                             f"{SCHEMA_VERSION}")

    def _write(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """fn(conn) inside BEGIN IMMEDIATE ... COMMIT, retried while another writer holds the database
        (in short slices: Ctrl-C reaches a waiting main thread)."""
        c = self._conn()
        while True:
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if _busy(e):
                    time.sleep(0.001)
                    continue
                raise
            except sqlite3.DatabaseError as e:
                raise ValueError(f"url: {self.path!r} is not a usable SQLite database ({e})") from None
            try:
                result = fn(c)
                c.execute("COMMIT")
                return result
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    def _one(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        """One statement in its own (implicit) transaction: the cheapest durable write."""
        c = self._conn()
        while True:
            try:
                return c.execute(sql, params)
            except sqlite3.OperationalError as e:
                if _busy(e):
                    time.sleep(0.001)
                    continue
                raise

    def _read(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        c = self._conn()
        while True:
            try:
                return fn(c)
            except sqlite3.OperationalError as e:
                if _busy(e):
                    time.sleep(0.001)
                    continue
                raise

    # ---- producers --------------------------------------------------------------------------------------

    def put_many(self, items: Sequence[tuple[str | None, bytes, float]]) -> list[str]:
        now = time.time()
        if len(items) == 1:  # one INSERT commits by itself
            key, body, not_before = items[0]
            cur = self._one("INSERT INTO gf_msg(queue, key, body, not_before, created) VALUES(?,?,?,?,?)",
                            (self.queue, key, body, not_before, now))
            return [str(cur.lastrowid)]

        def go(c: sqlite3.Connection) -> list[str]:
            ids = []
            for key, body, not_before in items:
                cur = c.execute("INSERT INTO gf_msg(queue, key, body, not_before, created) VALUES(?,?,?,?,?)",
                                (self.queue, key, body, not_before, now))
                ids.append(str(cur.lastrowid))
            return ids
        return self._write(go)

    # ---- groups and consumers ---------------------------------------------------------------------------

    def ensure_group(self, grp: str) -> None:
        def go(c: sqlite3.Connection) -> None:
            if c.execute("SELECT 1 FROM gf_group WHERE queue=? AND grp=?", (self.queue, grp)).fetchone():
                return
            (oldest,) = c.execute("SELECT MIN(id) FROM gf_msg WHERE queue=?", (self.queue,)).fetchone()
            if oldest is None:
                (last,) = c.execute("SELECT seq FROM sqlite_sequence WHERE name='gf_msg'").fetchone() or (0,)
                start = last
            else:
                start = oldest - 1
            c.execute("INSERT INTO gf_group VALUES(?,?,?)", (self.queue, grp, start))
        self._write(go)

    def take(self, grp: str, consumer: str, n: int, lease: float, max_attempts: int) -> list[Taken]:
        def go(c: sqlite3.Connection) -> list[Taken]:
            now = time.time()
            out: list[Taken] = []
            q = self.queue
            # 1. retries and expired leases, oldest message first
            rows = c.execute("SELECT msg_id, state, attempt, error FROM gf_pending WHERE queue=? AND grp=? AND "
                             "state IN (1, 2) AND due <= ? ORDER BY msg_id LIMIT ?", (q, grp, now, n)).fetchall()
            for msg_id, state, attempt, error in rows:
                if attempt >= max_attempts:
                    why = error if state == WAITING else f"the lease ran out on attempt {attempt}"
                    c.execute("UPDATE gf_pending SET state=3, due=?, token=NULL, error=? WHERE queue=? AND grp=? "
                              "AND msg_id=?", (now, why, q, grp, msg_id))
                    continue
                token = secrets.randbits(62)
                c.execute("UPDATE gf_pending SET state=1, due=?, attempt=attempt+1, token=?, consumer=? WHERE "
                          "queue=? AND grp=? AND msg_id=?", (now + lease, token, consumer, q, grp, msg_id))
                key, body = c.execute("SELECT key, body FROM gf_msg WHERE id=?", (msg_id,)).fetchone()
                out.append(Taken(str(msg_id), key, body, attempt + 1, token))
            # 2. fresh messages past the group's cursor
            while len(out) < n:
                (cursor,) = c.execute("SELECT cursor FROM gf_group WHERE queue=? AND grp=?", (q, grp)).fetchone()
                fresh = c.execute("SELECT id, key, body, not_before FROM gf_msg WHERE queue=? AND id>? ORDER BY id "
                                  "LIMIT ?", (q, cursor, n - len(out))).fetchall()
                if not fresh:
                    break
                for msg_id, key, body, not_before in fresh:
                    if not_before > now:  # delayed: it waits among the group's pending messages
                        c.execute("INSERT INTO gf_pending VALUES(?,?,?,2,?,0,NULL,NULL,NULL)",
                                  (q, grp, msg_id, not_before))
                        continue
                    token = secrets.randbits(62)
                    c.execute("INSERT INTO gf_pending VALUES(?,?,?,1,?,1,?,?,NULL)",
                              (q, grp, msg_id, now + lease, token, consumer))
                    out.append(Taken(str(msg_id), key, body, 1, token))
                c.execute("UPDATE gf_group SET cursor=? WHERE queue=? AND grp=?", (fresh[-1][0], q, grp))
            return out
        return self._write(go)

    def ack(self, grp: str, msg_id: str, token: int) -> None:
        # one DELETE, its own transaction; the gf_settle trigger drops the message once no group needs it
        cur = self._one("DELETE FROM gf_pending WHERE queue=? AND grp=? AND msg_id=? AND state=1 AND token=?",
                        (self.queue, grp, int(msg_id), token))
        if cur.rowcount != 1:
            raise LeaseLost(f"message {msg_id}: its lease ran out and it went to another consumer (or was "
                            f"dead-lettered): this ack is refused; the other delivery's outcome counts")

    def ack_many(self, grp: str, items: Sequence[tuple[str, Any]]) -> list[bool]:
        """Ack several in one transaction; for each, whether its lease still held."""
        def go(c: sqlite3.Connection) -> list[bool]:
            return [c.execute("DELETE FROM gf_pending WHERE queue=? AND grp=? AND msg_id=? AND state=1 AND "
                              "token=?", (self.queue, grp, int(i), t)).rowcount == 1 for i, t in items]
        return self._write(go)

    def nack(self, grp: str, msg_id: str, token: int, due: float, error: str | None, max_attempts: int) -> bool:
        """Back to waiting until `due`; dead when the attempts are spent. True if it went dead."""
        def go(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT attempt FROM gf_pending WHERE queue=? AND grp=? AND msg_id=? AND state=1 AND "
                            "token=?", (self.queue, grp, int(msg_id), token)).fetchone()
            if row is None:
                raise LeaseLost(f"message {msg_id}: its lease ran out and it went to another consumer: this nack is "
                                f"refused")
            dead = bool(row[0] >= max_attempts)
            c.execute("UPDATE gf_pending SET state=?, due=?, token=NULL, error=? WHERE queue=? AND grp=? AND msg_id=?",
                      (DEAD if dead else WAITING, time.time() if dead else due, error, self.queue, grp, int(msg_id)))
            return dead
        return self._write(go)

    def release(self, grp: str, msg_id: str, token: int) -> None:
        """Back to the group at once, its delivery not counted (taken but never handed to a handler)."""
        def go(c: sqlite3.Connection) -> None:
            cur = c.execute("UPDATE gf_pending SET state=2, due=?, attempt=attempt-1, token=NULL WHERE queue=? AND "
                            "grp=? AND msg_id=? AND state=1 AND token=?",
                            (time.time(), self.queue, grp, int(msg_id), token))
            if cur.rowcount != 1:
                raise LeaseLost(f"message {msg_id}: its lease already ran out")
        self._write(go)

    def extend(self, grp: str, msg_id: str, token: int, due: float) -> None:
        def go(c: sqlite3.Connection) -> None:
            cur = c.execute("UPDATE gf_pending SET due=? WHERE queue=? AND grp=? AND msg_id=? AND state=1 AND token=?",
                            (due, self.queue, grp, int(msg_id), token))
            if cur.rowcount != 1:
                raise LeaseLost(f"message {msg_id}: its lease ran out and it went to another consumer: too late to "
                                f"extend it")
        self._write(go)

    def wait_hint(self, grp: str) -> float | None:
        """When something may next be takeable: now if there is something already, else the earliest due
        time among the group's waiting and leased messages; None if nothing is in sight."""
        def go(c: sqlite3.Connection) -> float | None:
            q = self.queue
            row = c.execute("SELECT cursor FROM gf_group WHERE queue=? AND grp=?", (q, grp)).fetchone()
            if row is None:
                return None
            if c.execute("SELECT 1 FROM gf_msg WHERE queue=? AND id>? LIMIT 1", (q, row[0])).fetchone():
                return 0.0
            (due,) = c.execute("SELECT MIN(due) FROM gf_pending WHERE queue=? AND grp=? AND state IN (1, 2)",
                               (q, grp)).fetchone()
            return due  # type: ignore[no-any-return]
        return self._read(go)

    def version(self) -> int:
        """Changes when another connection commits (PRAGMA data_version): a cheap "anything new?"."""
        return int(self._read(lambda c: c.execute("PRAGMA data_version").fetchone()[0]))

    # ---- dead letters and stats ---------------------------------------------------------------------

    def dead(self, grp: str) -> list[tuple[str, str | None, bytes, int, str | None, float]]:
        return self._read(lambda c: [(str(i), k, b, a, e, d) for i, k, b, a, e, d in c.execute(
            "SELECT p.msg_id, m.key, m.body, p.attempt, p.error, p.due FROM gf_pending p JOIN gf_msg m ON "
            "m.id=p.msg_id WHERE p.queue=? AND p.grp=? AND p.state=3 ORDER BY p.msg_id", (self.queue, grp))])

    def requeue(self, grp: str, ids: Sequence[str] | None) -> int:
        def go(c: sqlite3.Connection) -> int:
            n = 0
            for msg_id in self._dead_ids(c, grp, ids):
                n += c.execute("UPDATE gf_pending SET state=2, due=?, attempt=0, error=NULL WHERE queue=? AND grp=? "
                               "AND msg_id=? AND state=3", (time.time(), self.queue, grp, msg_id)).rowcount
            return n
        return self._write(go)

    def purge(self, grp: str, ids: Sequence[str] | None) -> int:
        def go(c: sqlite3.Connection) -> int:
            n = 0
            for msg_id in self._dead_ids(c, grp, ids):
                n += c.execute("DELETE FROM gf_pending WHERE queue=? AND grp=? AND msg_id=? AND state=3",
                               (self.queue, grp, msg_id)).rowcount  # (gf_settle drops the message)
            return n
        return self._write(go)

    def _dead_ids(self, c: sqlite3.Connection, grp: str, ids: Sequence[str] | None) -> list[int]:
        if ids is not None:
            return [int(i) for i in ids]
        return [r[0] for r in c.execute("SELECT msg_id FROM gf_pending WHERE queue=? AND grp=? AND state=3",
                                        (self.queue, grp))]

    def stats(self, grp: str) -> dict[str, Any]:
        def go(c: sqlite3.Connection) -> dict[str, Any]:
            now, q = time.time(), self.queue
            row = c.execute("SELECT cursor FROM gf_group WHERE queue=? AND grp=?", (q, grp)).fetchone()
            cursor = row[0] if row else None
            counts = dict.fromkeys(("ready", "leased", "delayed", "dead"), 0)
            oldest = None
            if cursor is not None:
                for state, due, n, first in c.execute(
                        "SELECT state, due <= ?, COUNT(*), MIN(m.created) FROM gf_pending p JOIN gf_msg m ON "
                        "m.id=p.msg_id WHERE p.queue=? AND p.grp=? GROUP BY state, due <= ?", (now, q, grp, now)):
                    kind = {LEASED: "leased" if not due else "ready", WAITING: "ready" if due else "delayed",
                            DEAD: "dead"}[state]
                    counts[kind] += n
                    if state != DEAD and first is not None:
                        oldest = first if oldest is None else min(oldest, first)
            for due, n, first in c.execute(
                    "SELECT not_before <= ?, COUNT(*), MIN(created) FROM gf_msg WHERE queue=? AND id>? GROUP BY "
                    "not_before <= ?", (now, q, -1 if cursor is None else cursor, now)):
                counts["ready" if due else "delayed"] += n
                oldest = first if oldest is None else min(oldest, first)
            groups = [r[0] for r in c.execute("SELECT grp FROM gf_group WHERE queue=? ORDER BY grp", (q,))]
            return {**counts, "oldest_age_s": 0.0 if oldest is None else max(0.0, now - oldest), "groups": groups}
        return self._read(go)

    def close(self) -> None:
        with self._lock:
            conns, self._all = list(self._all.values()), {}
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()


def _statements(script: str) -> list[str]:
    """The statements of a script (a trigger's body keeps its own semicolons)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s]


def _busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e)
    return "locked" in msg or "busy" in msg
