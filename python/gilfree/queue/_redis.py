"""The scale-out backend: Redis Streams with consumer groups (``pip install 'gilfree[redis]'``).

A queue is one stream, ``gf:{name}:stream``: ``put`` is XADD (``put_many`` one MULTI/EXEC: all or none),
and every group is a Redis consumer group on it that reads new entries with XREADGROUP, so every group
sees every message and Redis keeps each entry in the group's pending list (PEL) until the final XACK.
The lease of each delivery lives beside it, in keys of the group (``gf:{name}:g:{group}:...``): a sorted
set of lease deadlines, one of retry times (nacked or delayed messages), the delivery counts, the lease
tokens and the last errors, and a dead-letter stream. Expired leases are found in the deadline set rather
than with XAUTOCLAIM's idle time, because a lease can be extended by any amount and a retry can wait longer
than a lease; XAUTOCLAIM would offer both too early. Every change of a delivery is one Lua script, so it is
atomic, and all times are the server's (``TIME``), so clients' clocks do not matter.

Entries are trimmed (XTRIM MINID) below the oldest one any group still needs (its PEL, or past its last
delivered id); a dead letter carries its own copy of the value.

Connections lost (a restarted server) are retried with backoff for up to ``RETRY_FOR`` seconds. A put or
a take retried after a lost reply may have been applied the first time: a message can then be stored
twice or its delivery counted twice, which at-least-once delivery allows.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, Callable, Sequence, TypeVar

from ._common import LeaseLost, Taken

R = TypeVar("R")
RETRY_FOR = 60.0  # seconds a lost connection is retried before the error reaches the caller
TRIM_EVERY = 512  # acks between two trims of the stream (by this client)

_LIB = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function id_parts(id)
  local m, s = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(m), tonumber(s)
end
local function id_lt(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  if am ~= bm then return am < bm end
  return as < bs
end
"""

# A message's fields (its value from the body hash when a requeue put it there), and moving it to the dead
# letters; for scripts that have S, W, L, T, A, E, D, B, grp and now as locals.
_DEAD = r"""
local function fields(id)
  local f = {}
  local r = redis.call('XRANGE', S, id, id)
  if r[1] then
    local kv = r[1][2]
    for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
  end
  local b = redis.call('HGET', B, id)
  if b then f['b'] = b end
  return f
end
local function die(id, why)
  local f = fields(id)
  redis.call('XADD', D, '*', 'id', id, 'b', f['b'] or '', 'k', f['k'] or '', 'hk', f['hk'] or '0',
             'a', redis.call('HGET', A, id) or '0', 'e', why, 't', tostring(now))
  redis.call('ZREM', W, id)
  redis.call('ZREM', L, id)
  redis.call('HDEL', T, id)
  redis.call('HDEL', A, id)
  redis.call('HDEL', E, id)
  redis.call('HDEL', B, id)
  redis.call('XACK', S, grp, id)
end
"""

# KEYS: stream, wait, lease, tok, att, err, dead, body. ARGV: group, consumer, n, lease_ms, max_attempts, token base
_TAKE = _LIB + r"""
local S, W, L, T, A, E, D, B = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local grp, consumer = ARGV[1], ARGV[2]
local n, lease, maxatt, tokbase = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local now = now_ms()
local out, seq = {}, 0
""" + _DEAD + r"""
local function lease_it(id, f)
  local att = redis.call('HINCRBY', A, id, 1)
  seq = seq + 1
  local tok = tokbase .. ':' .. seq
  redis.call('ZREM', W, id)
  redis.call('ZADD', L, now + lease, id)
  redis.call('HSET', T, id, tok)
  out[#out + 1] = {id, f['hk'] or '0', f['k'] or '', f['b'] or '', att, tok}
end
local due = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', W, '-inf', now, 'LIMIT', 0, n)) do due[#due + 1] = {id, 'w'} end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, n)) do due[#due + 1] = {id, 'l'} end
table.sort(due, function(a, b) return id_lt(a[1], b[1]) end)
for _, d in ipairs(due) do
  if #out >= n then break end
  local id = d[1]
  local att = tonumber(redis.call('HGET', A, id) or '0')
  if att >= maxatt then
    local why
    if d[2] == 'l' then why = 'the lease ran out on attempt ' .. att else why = redis.call('HGET', E, id) or '' end
    die(id, why)
  else
    lease_it(id, fields(id))
  end
end
while #out < n do
  local r = redis.call('XREADGROUP', 'GROUP', grp, consumer, 'COUNT', n - #out, 'STREAMS', S, '>')
  if (not r) or (not r[1]) or #r[1][2] == 0 then break end
  for _, e in ipairs(r[1][2]) do
    local id, kv = e[1], e[2]
    local f = {}
    for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
    local nb = tonumber(f['nb'] or '0')
    if nb > now then
      redis.call('ZADD', W, nb, id)
    else
      lease_it(id, f)
    end
  end
end
return out
"""

# KEYS: stream, lease, tok, att, err, body. ARGV: group, id, token. 1 done, 0 lost, -1 lost but gone
_ACK = r"""
if redis.call('HGET', KEYS[3], ARGV[2]) ~= ARGV[3] then
  if redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 0 end
  return -1
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: stream, wait, lease, tok, att, err, dead, body. ARGV: group, id, token, delay_ms, error, max_attempts
_NACK = _LIB + r"""
local S, W, L, T, A, E, D, B = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local grp, id, tok = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', T, id) ~= tok then return -1 end
local now = now_ms()
local att = tonumber(redis.call('HGET', A, id) or '0')
redis.call('HDEL', T, id)
redis.call('ZREM', L, id)
if ARGV[5] ~= '' then redis.call('HSET', E, id, ARGV[5]) end
""" + _DEAD + r"""
if att >= tonumber(ARGV[6]) then
  die(id, ARGV[5])
  return 1
end
redis.call('ZADD', W, now + tonumber(ARGV[4]), id)
return 0
"""

# KEYS: lease, tok. ARGV: id, token, seconds_ms
_EXTEND = _LIB + r"""
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now_ms() + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: wait, lease, tok, att. ARGV: id, token
_RELEASE = _LIB + r"""
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[1], -1)
redis.call('ZADD', KEYS[1], now_ms(), ARGV[1])
return 1
"""

# KEYS: stream, wait, lease. ARGV: group. {0} no group, {1} nothing in sight, {2, ms from now}
_HINT = _LIB + r"""
local now = now_ms()
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local m = {}
  for i = 1, #g, 2 do m[g[i]] = g[i + 1] end
  if m['name'] == ARGV[1] then last = m['last-delivered-id'] end
end
if not last then return {0} end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if top[1] and id_lt(last, top[1][1]) then return {2, 0} end
local best = nil
local w = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if w[2] then best = tonumber(w[2]) end
local l = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if l[2] and (best == nil or tonumber(l[2]) < best) then best = tonumber(l[2]) end
if best == nil then return {1} end
return {2, best - now}
"""

# KEYS: stream. Trim below the oldest entry any group still needs.
_TRIM = _LIB + r"""
local need = nil
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
for _, g in ipairs(groups) do
  local m = {}
  for i = 1, #g, 2 do m[g[i]] = g[i + 1] end
  local p = redis.call('XPENDING', KEYS[1], m['name'])
  local cand = nil
  if p[2] then cand = p[2] else
    local ms, sq = id_parts(m['last-delivered-id'])
    cand = ms .. '-' .. (sq + 1)
  end
  if need == nil or id_lt(cand, need) then need = cand end
end
return redis.call('XTRIM', KEYS[1], 'MINID', need)
"""


class RedisBackend:
    """What DurableQueue needs from a store, on Redis Streams."""

    kind = "redis"

    def __init__(self, url: str, queue: str) -> None:
        try:
            import redis
        except ImportError:
            raise ImportError("a redis:// queue needs the redis client: pip install 'gilfree[redis]'") from None
        self._redis = redis
        self.url, self.queue, self.path = url, queue, url
        try:
            self._r: Any = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        except ValueError as e:
            raise ValueError(f"url {url!r}: {e}") from None
        self._stream = f"gf:{queue}:stream"
        s = self._r.register_script
        self._take, self._ack, self._nack = s(_TAKE), s(_ACK), s(_NACK)
        self._extend, self._release, self._hint, self._trim = s(_EXTEND), s(_RELEASE), s(_HINT), s(_TRIM)
        self._acks = 0
        self._pid = os.getpid()
        try:
            self._r.ping()  # at construction no retrying: a wrong address is reported at once
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise ConnectionError(f"url {url!r}: cannot reach the Redis server: {e}") from None

    def _keys(self, grp: str) -> list[str]:
        g = f"gf:{self.queue}:g:{grp}"
        return [self._stream, f"{g}:wait", f"{g}:lease", f"{g}:tok", f"{g}:att", f"{g}:err", f"{g}:dead", f"{g}:body"]

    def _call(self, fn: Callable[[], R], retried: list[bool] | None = None) -> R:
        """fn(), retried with backoff while the server cannot be reached (a restart), for RETRY_FOR s."""
        if self._pid != os.getpid():  # a forked child: its own connections
            self._r.connection_pool.reset()
            self._pid = os.getpid()
        deadline = time.monotonic() + RETRY_FOR
        pause = 0.05
        while True:
            try:
                return fn()
            except (self._redis.ConnectionError, self._redis.TimeoutError, self._redis.BusyLoadingError) as e:
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"{self.url}: unreachable for {RETRY_FOR:.0f} s: {e}") from e
                if retried is not None:
                    retried.append(True)
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    # ---- producers --------------------------------------------------------------------------------------

    def put_many(self, items: Sequence[tuple[str | None, bytes, float]]) -> list[str]:
        now_ms = str(int(time.time() * 1000))

        def go() -> list[str]:
            p = self._r.pipeline(transaction=True)  # MULTI/EXEC: all of the batch or none
            for key, body, not_before in items:
                p.xadd(self._stream, {"b": body, "k": key or "", "hk": "0" if key is None else "1",
                                      "nb": str(int(not_before * 1000)) if not_before else "0", "c": now_ms})
            return [i.decode() if isinstance(i, bytes) else str(i) for i in p.execute()]
        return self._call(go)

    # ---- groups and consumers ---------------------------------------------------------------------------

    def ensure_group(self, grp: str) -> None:
        def go() -> None:
            try:
                self._r.xgroup_create(self._stream, grp, id="0", mkstream=True)
            except self._redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._call(go)

    def take(self, grp: str, consumer: str, n: int, lease: float, max_attempts: int) -> list[Taken]:
        base = secrets.token_hex(8)
        rows = self._call(lambda: self._take(keys=self._keys(grp), args=[grp, consumer, n, int(lease * 1000),
                                                                          max_attempts, base]))
        return [Taken(_s(i), _s(k) if _s(hk) == "1" else None, bytes(b), int(a), _s(t)) for i, hk, k, b, a, t in rows]

    def ack(self, grp: str, msg_id: str, token: Any) -> None:
        k = self._keys(grp)
        retried: list[bool] = []
        r = self._call(lambda: self._ack(keys=[k[0], k[2], k[3], k[4], k[5], k[7]], args=[grp, msg_id, token]),
                       retried)
        if r == 0 or (r == -1 and not retried):
            raise LeaseLost(f"message {msg_id}: its lease ran out and it went to another consumer (or was "
                            f"dead-lettered): this ack is refused; the other delivery's outcome counts")
        self._acks += 1
        if self._acks % TRIM_EVERY == 0:
            self.trim()

    def ack_many(self, grp: str, items: Sequence[tuple[str, Any]]) -> list[bool]:
        """Ack several in one round trip; for each, whether its lease still held."""
        k = self._keys(grp)

        def go() -> list[Any]:
            p = self._r.pipeline(transaction=False)
            for msg_id, token in items:
                self._ack(keys=[k[0], k[2], k[3], k[4], k[5], k[7]], args=[grp, msg_id, token], client=p)
            return list(p.execute())
        results = self._call(go)
        self._acks += len(items)
        if self._acks % TRIM_EVERY < len(items):
            self.trim()
        return [r == 1 for r in results]

    def nack(self, grp: str, msg_id: str, token: Any, due: float, error: str | None, max_attempts: int) -> bool:
        delay_ms = max(0, int((due - time.time()) * 1000))
        r = self._call(lambda: self._nack(keys=self._keys(grp), args=[grp, msg_id, token, delay_ms, error or "",
                                                                      max_attempts]))
        if r == -1:
            raise LeaseLost(f"message {msg_id}: its lease ran out and it went to another consumer: this nack is "
                            f"refused")
        return bool(r == 1)

    def extend(self, grp: str, msg_id: str, token: Any, due: float) -> None:
        k = self._keys(grp)
        ms = max(1, int((due - time.time()) * 1000))
        if not self._call(lambda: self._extend(keys=[k[2], k[3]], args=[msg_id, token, ms])):
            raise LeaseLost(f"message {msg_id}: its lease ran out and it went to another consumer: too late to "
                            f"extend it")

    def release(self, grp: str, msg_id: str, token: Any) -> None:
        k = self._keys(grp)
        if not self._call(lambda: self._release(keys=[k[1], k[2], k[3], k[4]], args=[msg_id, token])):
            raise LeaseLost(f"message {msg_id}: its lease already ran out")

    def wait_hint(self, grp: str) -> float | None:
        k = self._keys(grp)
        r = self._call(lambda: self._hint(keys=[k[0], k[1], k[2]], args=[grp]))
        if int(r[0]) != 2:
            return None
        return time.time() + int(r[1]) / 1000

    def trim(self) -> None:
        self._call(lambda: self._trim(keys=[self._stream], args=[]))

    # ---- dead letters and stats ---------------------------------------------------------------------

    def _dead_entries(self, grp: str) -> list[tuple[str, dict[str, bytes]]]:
        rows = self._call(lambda: self._r.xrange(self._keys(grp)[6], "-", "+"))
        return [(_s(eid), {_s(f): v for f, v in fields.items()}) for eid, fields in rows]

    def dead(self, grp: str) -> list[tuple[str, str | None, bytes, int, str | None, float]]:
        out = []
        for _, f in self._dead_entries(grp):
            out.append((_s(f["id"]), _s(f["k"]) if _s(f.get("hk", b"0")) == "1" else None, bytes(f["b"]),
                        int(f["a"]), _s(f["e"]) or None, int(f["t"]) / 1000))
        return out

    def requeue(self, grp: str, ids: Sequence[str] | None) -> int:
        k = self._keys(grp)
        chosen = [(eid, f) for eid, f in self._dead_entries(grp) if ids is None or _s(f["id"]) in ids]

        def go() -> int:
            p = self._r.pipeline(transaction=True)
            (sec, usec) = self._r.time()
            now = sec * 1000 + usec // 1000
            for eid, f in chosen:
                mid = _s(f["id"])
                p.hset(k[7], mid, f["b"])
                p.hset(k[4], mid, 0)
                p.zadd(k[1], {mid: now})
                p.xdel(k[6], eid)
            p.execute()
            return len(chosen)
        return self._call(go)

    def purge(self, grp: str, ids: Sequence[str] | None) -> int:
        k = self._keys(grp)
        chosen = [eid for eid, f in self._dead_entries(grp) if ids is None or _s(f["id"]) in ids]
        if not chosen:
            return 0
        return int(self._call(lambda: self._r.xdel(k[6], *chosen)))

    def stats(self, grp: str) -> dict[str, Any]:
        k = self._keys(grp)

        def go() -> dict[str, Any]:
            sec, usec = self._r.time()
            now = sec * 1000 + usec // 1000
            groups = {_s(g["name"]): g for g in self._r.xinfo_groups(self._stream)} if self._r.exists(self._stream) \
                else {}
            counts = dict.fromkeys(("ready", "leased", "delayed", "dead"), 0)
            g = groups.get(grp)
            # entries the group has not read yet (for a group to be: the whole stream)
            last = _s(g["last-delivered-id"]) if g is not None else "0-0"
            fresh = self._r.xrange(self._stream, f"({last}", "+")
            for _, f in fresh:
                counts["delayed" if int(f.get(b"nb", b"0")) > now else "ready"] += 1
            ids = [_s(fresh[0][0])] if fresh else []
            if g is not None:
                counts["ready"] += self._r.zcount(k[1], "-inf", now) + self._r.zcount(k[2], "-inf", now)
                counts["delayed"] += self._r.zcount(k[1], f"({now}", "+inf")
                counts["leased"] = self._r.zcount(k[2], f"({now}", "+inf")
                counts["dead"] = self._r.xlen(k[6])
                ids += [_s(m) for key in (k[1], k[2]) for m in self._r.zrange(key, 0, -1)]
            oldest = min((_ms(i) for i in ids), default=None)
            return {**counts, "oldest_age_s": 0.0 if oldest is None else max(0.0, (now - oldest) / 1000),
                    "groups": sorted(groups)}
        return self._call(go)

    def close(self) -> None:
        try:
            self._trim(keys=[self._stream], args=[])  # once, not retried: closing never waits on a dead server
        except Exception:  # noqa: BLE001 - the next client trims
            pass
        self._r.close()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])
