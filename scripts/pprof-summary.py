#!/usr/bin/env python3
"""Summarizes collapsed stacks (`thread;outer;...;inner COUNT`, as `EMBER_PPROF` writes them,
see crates/ember-cli/src/profile.rs): samples per thread, then for the busiest thread (or
--thread NAME) the functions with the most samples of their own (self), the most samples under
them (inclusive), and self samples per crate. Usage: pprof-summary.py FILE [--thread NAME] [--top N]"""
import argparse
import collections
import re


def crate(symbol):
    """`<burn_fusion::stream::X as Y>::f` -> burn_fusion; `cuLaunchKernel` -> (C)."""
    # (profile.rs writes spaces as underscores: `<dyn core::..>` is `<dyn_core::..>`)
    m = re.match(r"[<&_]*(?:dyn_)?([A-Za-z_][A-Za-z0-9_]*)::", symbol)
    return m.group(1) if m else "(C or unknown)"


def short(symbol, width=150):
    symbol = re.sub(r"::h[0-9a-f]{16}$", "", symbol)
    return symbol if len(symbol) <= width else symbol[: width - 3] + "..."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--thread")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    stacks = []
    for line in open(a.file, errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        path, _, count = line.rpartition(" ")
        frames = path.split(";")
        stacks.append((frames[0], frames[1:], int(count)))
    per_thread = collections.Counter()
    for thread, _, n in stacks:
        per_thread[thread] += n
    total = sum(per_thread.values())
    print(f"{total} samples")
    for thread, n in per_thread.most_common(12):
        print(f"{n:8d} {100 * n / total:5.1f} %  {thread}")
    thread = a.thread or per_thread.most_common(1)[0][0]
    mine = [(f, n) for t, f, n in stacks if t == thread]
    tn = sum(n for _, n in mine)
    own, incl, crates = collections.Counter(), collections.Counter(), collections.Counter()
    for frames, n in mine:
        leaf = frames[-1] if frames else "(no frames)"
        own[short(leaf)] += n
        crates[crate(leaf)] += n
        for f in {short(f) for f in frames}:
            incl[f] += n
    print(f"\n== thread {thread}: {tn} samples; self time per crate")
    for c, n in crates.most_common(a.top):
        print(f"{n:8d} {100 * n / tn:5.1f} %  {c}")
    print(f"\n== thread {thread}: self")
    for f, n in own.most_common(a.top):
        print(f"{n:8d} {100 * n / tn:5.1f} %  {f}")
    print(f"\n== thread {thread}: inclusive")
    for f, n in incl.most_common(a.top * 2):
        print(f"{n:8d} {100 * n / tn:5.1f} %  {f}")


if __name__ == "__main__":
    main()
