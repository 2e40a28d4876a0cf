"""What else runs on the machine: shared by the benches to report figures taken under load."""

from __future__ import annotations

import os

# Command-line fragments of processes that make a measurement unrepresentative.
HEAVY_NAMES = ("pytest", "bench/", "cc1", "cc1plus", "gcc", "g++", "clang", "rustc", "cargo", "ld.lld",
               "make", "ninja", "pip install", "mypy", "ruff", "apt", "dpkg")


def proc_table() -> dict[int, tuple[int, int, str]]:
    """pid → (utime + stime ticks, parent pid, command line) of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        out[int(name)] = (int(rest[11]) + int(rest[12]), int(rest[1]),
                          cmd or stat[stat.index("(") + 1:stat.rindex(")")])
    return out
