#!/usr/bin/env python3
"""An agent that answers its owner's questions about the machine it runs on.

Put it behind the relay with the bridge::

    agentvault --profile agent agent run --room ops -- python3 machine_agent.py
    agentvault --profile agent agent run --room ops --mode lines \\
        -- python3 machine_agent.py --lines

It understands ``time``, ``uptime``, ``load``, ``disk [PATH]``, ``memory``,
``processes`` and ``help``; anything else is acknowledged with its size and
SHA-256, so the sender can check it arrived intact. Standard library only.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import sys


def _uptime() -> str:
    try:
        with open("/proc/uptime") as handle:
            seconds = int(float(handle.read().split()[0]))
    except OSError:
        return "uptime is not available here"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"up {days} d {hours} h {rest // 60} min"


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average is not available here"
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def _disk(path: str) -> str:
    usage = shutil.disk_usage(path)
    gib = 1024**3
    return (
        f"{path}: {usage.used / gib:.1f} GiB used of {usage.total / gib:.1f} GiB "
        f"({usage.used * 100 // max(usage.total, 1)}%), {usage.free / gib:.1f} GiB free"
    )


def _memory() -> str:
    try:
        with open("/proc/meminfo") as handle:
            info = dict(line.split(":", 1) for line in handle)
    except OSError:
        return "memory figures are not available here"
    total = int(info["MemTotal"].split()[0]) // 1024
    available = int(info["MemAvailable"].split()[0]) // 1024
    return f"memory: {available} MiB available of {total} MiB"


def _processes() -> str:
    rows = []
    for pid in filter(
        str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []
    ):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/comm") as handle:
                name = handle.read().strip()
        except OSError:
            continue
        rss_pages = int(fields[21])
        rows.append((rss_pages, int(pid), name))
    if not rows:
        return "the process list is not available here"
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    top = sorted(rows, reverse=True)[:5]
    lines = [f"{len(rows)} processes; the largest by memory:"]
    lines += [
        f"  {pid:>7}  {rss * page_kib // 1024:>6} MiB  {name}" for rss, pid, name in top
    ]
    return "\n".join(lines)


def answer(text: str) -> str:
    """Return the answer to one message."""
    words = text.strip().split()
    command = words[0].lower().rstrip("?") if words else ""
    if command == "time":
        now = datetime.datetime.now().astimezone()
        return f"It is {now:%Y-%m-%d %H:%M:%S %Z} on {platform.node()}."
    if command == "uptime":
        return _uptime()
    if command == "load":
        return _load()
    if command == "disk":
        return _disk(words[1] if len(words) > 1 else "/")
    if command == "memory":
        return _memory()
    if command in ("processes", "ps", "top"):
        return _processes()
    if command == "help":
        return "Ask me: time, uptime, load, disk [PATH], memory, processes."
    data = text.encode("utf-8")
    preview = text if len(text) <= 60 else text[:57] + "..."
    return (
        f"Received {len(text)} characters ({len(data)} bytes, sha256 "
        f"{hashlib.sha256(data).hexdigest()[:16]}): {preview}"
    )


def main() -> None:
    """Answer one message (standard input) or, with --lines, a stream of them."""
    if "--lines" not in sys.argv[1:]:
        sys.stdout.write(answer(sys.stdin.read()) + "\n")
        return
    for line in sys.stdin:
        request = json.loads(line)
        reply = {"text": answer(request["text"])}
        sys.stdout.write(json.dumps(reply, ensure_ascii=False) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
