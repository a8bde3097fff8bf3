"""python -m gilfree.queue stats URL [--name NAME] [--group GROUP] [--json]: a queue's counts per group."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from . import DurableQueue


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gilfree.queue", description="Inspect a gilfree.DurableQueue.")
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stats", help="ready, leased, delayed and dead counts, and the oldest message's age")
    st.add_argument("url", help="a file path, sqlite:///path or redis://host:port/db")
    st.add_argument("--name", default="default", help="the queue's name (default: default)")
    st.add_argument("--group", action="append", help="a consumer group (repeatable; default: every group)")
    st.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    try:
        q = DurableQueue(args.url, args.name)
    except (TypeError, ValueError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with q:
        groups = args.group if args.group else q.stats()["groups"]
        rows = {g: {k: v for k, v in q.stats(g).items() if k != "groups"} for g in groups}
    if args.json:
        print(json.dumps({"url": args.url, "name": args.name, "groups": rows}, indent=2))
        return 0
    if not rows:
        print(f"{args.url} {args.name}: no consumer groups yet")
        return 0
    print(f"{'group':24} {'ready':>8} {'leased':>8} {'delayed':>8} {'dead':>8} {'oldest age s':>13}")
    for g, r in rows.items():
        print(f"{g:24} {r['ready']:8d} {r['leased']:8d} {r['delayed']:8d} {r['dead']:8d} {r['oldest_age_s']:13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
