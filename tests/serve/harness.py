"""What the `ember serve` checks share: starting the server on a free loopback port and
waiting for /health, raw HTTP to it, `ember` run alone for comparison, and `check`.
Standard library only (tests/serve/chat_page.py runs without the .venv)."""

import http.client
import json
import os
import re
import subprocess
import threading
import time

KEY = "sk-ember-test"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


class Server:
    """`ember serve` on a free loopback port (`--port 0`), its stderr kept in `log`; `key`
    None starts it without `--api-key`."""

    def __init__(self, ember, configs, extra, key=KEY):
        self.key = key
        args = [ember, "serve", "--port", "0"] + (["--api-key", key] if key else [])
        for c in configs:
            args += ["--config", c]
        self.proc = subprocess.Popen(
            args + extra, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.log = []
        self.port = None
        # A hang guard, not a timing: a fresh debug binary linking every backend, on a
        # loaded 2-core machine, once took over 120 s to load both models.
        deadline = time.time() + 300
        while self.port is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("ember serve exited:\n" + "".join(self.log))
            self.log.append(line)
            m = re.search(r"listening on http://[\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if time.time() > deadline:
                raise RuntimeError("ember serve did not start:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()
        while True:
            status, _ = self.get("/health")
            if status == 200:
                break
            check_alive = self.proc.poll()
            if check_alive is not None:
                raise RuntimeError(f"ember serve exited with {check_alive}:\n" + "".join(self.log))
            if time.time() > deadline:
                raise RuntimeError("the models did not load in 300 s:\n" + "".join(self.log))
            time.sleep(0.2)

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def conn(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, key=""):
        """`key` "" sends the server's own key, None none."""
        if key == "":
            key = self.key
        h = {"Content-Type": "application/json"}
        if key:
            h["Authorization"] = f"Bearer {key}"
        h.update(headers or {})
        c = self.conn()
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def get(self, path):
        try:
            return self.request("GET", path)
        except OSError:
            return 0, b""

    def metrics(self):
        status, text = self.get("/metrics")
        assert status == 200
        values = {}
        for line in text.decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
        return values


def cli_run(ember, config, prompt, n, raw):
    """`ember` run alone: its text and its prompt/generated token counts."""
    args = [ember, "--config", config, "-p", prompt, "-n", str(n), "--temperature", "0"]
    if raw:
        args.append("--raw")
    out = subprocess.run(args, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, check=True)
    m = re.search(r"prompt (\d+) tokens.*generated (\d+) tokens", out.stderr)
    assert m, out.stderr
    return out.stdout.rstrip("\n"), int(m.group(1)), int(m.group(2))
