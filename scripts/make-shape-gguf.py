#!/usr/bin/env python3
"""Writes a GGUF file with the shape of one of Ember's presets and seeded random weights, so
that Ember and llama.cpp read the same file in a speed comparison on a machine that has no
such model (issue 16: llama.cpp's CUDA build as the yardstick of the SmolLM2-1.7B shape; a
1.7B f16 file is 3.4 GB, too large to carry to the GPU machine, so it is made there).

    python3 scripts/make-shape-gguf.py SPEC OUT.gguf --tokenizer-from SMOLLM2.gguf [--seed N]

SPEC is a preset name as Ember's `preset:` sources take it, with the same overrides
(`smollm2-1.7b`, `smollm2-135m,layers=2`); the shapes are read from Ember's own table,
crates/ember/src/models/presets.rs, so the two cannot drift apart. The tokenizer (every
`tokenizer.*` key) is copied from another GGUF of the same vocabulary, e.g. the real
SmolLM2-135M file (SmolLM2's 135M and 1.7B share their 49152-token vocabulary).

Weights: the Llama tensors under llama.cpp's names, matrices and the (tied) token embedding in
F16 drawn from N(0, 0.02) with one numpy generator per 4M-value chunk of a tensor (seeded by
SEED, the tensor's name and the chunk: the file depends neither on tensor order nor on the
thread count; chunks are drawn on all cores), norm weights of one in F32, as llama.cpp's
converter writes them. Not Ember's preset weights (those come from a Rust generator): the same
shape, not the same values, which a speed comparison does not need. Tensors are streamed to
the file one at a time: memory stays at about one tensor (the embedding, 400 MB for 1.7B).

Needs numpy and the `gguf` package vendored in llama.cpp (gguf-py; GGUF_PY names its folder,
default: the one scripts/build-llama-cpp.sh unpacks under tools/, or beside this script's
bundle). PyYAML, which `gguf` imports for model cards only, is replaced by an empty module
when missing.
"""

import argparse
import os
import re
import sys
import time
import types
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PRESETS_RS = ROOT / "crates/ember/src/models/presets.rs"
GGUF_PY_DEFAULT = ROOT / "tools/llama.cpp/src/vendor/llama.cpp/gguf-py"

# The keys of Ember's `Preset` that a spec may override (Preset::parse).
OVERRIDABLE = ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab")


def import_gguf():
    path = os.environ.get("GGUF_PY", str(GGUF_PY_DEFAULT))
    sys.path.insert(0, path)
    try:
        import yaml  # noqa: F401
    except ImportError:
        # gguf.metadata imports yaml at module level to read model cards; nothing here does.
        sys.modules["yaml"] = types.ModuleType("yaml")
    try:
        import gguf
    except ImportError as e:
        sys.exit(f"make-shape-gguf: cannot import gguf from {path} (set GGUF_PY): {e}")
    return gguf


def read_presets(path=PRESETS_RS):
    """Ember's presets by name: {hidden, intermediate, layers, heads, kv_heads, vocab, context,
    rope_theta}, parsed from the `PRESETS` table of presets.rs."""
    text = Path(path).read_text()
    table = text[text.index("pub const PRESETS"):]
    table = table[: table.index("\n];")]
    presets = {}
    for block in re.findall(r"Preset \{(.*?)\n    \}", table, re.S):
        fields = dict(re.findall(r"^\s*(\w+): (.+?),\s*$", block, re.M))
        name = fields["name"].strip('"')
        shape = {}
        for key in OVERRIDABLE + ("context",):
            shape[key] = int(fields[key].replace("_", ""))
        shape["rope_theta"] = float(fields["rope_theta"].replace("_", ""))
        presets[name] = shape
    if not presets:
        sys.exit(f"make-shape-gguf: no presets found in {path}")
    return presets


def parse_spec(spec, presets):
    """`NAME[,key=value...]` as Ember's Preset::parse reads it."""
    name, *overrides = spec.split(",")
    if name not in presets:
        sys.exit(f"make-shape-gguf: unknown preset {name!r} (known: {', '.join(presets)})")
    shape = dict(presets[name])
    for part in overrides:
        key, _, value = part.partition("=")
        if key not in OVERRIDABLE or not value.isdigit() or int(value) == 0:
            sys.exit(f"make-shape-gguf: bad override {part!r} (expected one of "
                     f"{', '.join(OVERRIDABLE)} = a positive number)")
        shape[key] = int(value)
    if shape["hidden"] % shape["heads"] or shape["heads"] % shape["kv_heads"]:
        sys.exit(f"make-shape-gguf: {spec}: hidden must divide by heads, heads by kv_heads")
    return name, shape


def tensors(shape):
    """(name, numpy shape [rows, columns], kind) in the order llama.cpp's converter writes."""
    h, inter, v = shape["hidden"], shape["intermediate"], shape["vocab"]
    hd = h // shape["heads"]
    q, kv = shape["heads"] * hd, shape["kv_heads"] * hd
    out = [("token_embd.weight", (v, h), "matrix")]
    for i in range(shape["layers"]):
        out += [
            (f"blk.{i}.attn_norm.weight", (h,), "norm"),
            (f"blk.{i}.attn_q.weight", (q, h), "matrix"),
            (f"blk.{i}.attn_k.weight", (kv, h), "matrix"),
            (f"blk.{i}.attn_v.weight", (kv, h), "matrix"),
            (f"blk.{i}.attn_output.weight", (h, q), "matrix"),
            (f"blk.{i}.ffn_norm.weight", (h,), "norm"),
            (f"blk.{i}.ffn_gate.weight", (inter, h), "matrix"),
            (f"blk.{i}.ffn_up.weight", (inter, h), "matrix"),
            (f"blk.{i}.ffn_down.weight", (h, inter), "matrix"),
        ]
    out.append(("output_norm.weight", (h,), "norm"))
    return out


# Values per independently seeded chunk: the file does not depend on the thread count.
CHUNK = 1 << 22


def values(name, dims, kind, seed, pool):
    if kind == "norm":
        return np.ones(dims, dtype=np.float32)
    out = np.empty(int(np.prod(dims)), dtype=np.float16)

    def fill(chunk):
        # numpy's generators and casts release the GIL: chunks run in parallel on threads.
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), chunk])
        part = out[chunk * CHUNK:(chunk + 1) * CHUNK]
        x = rng.standard_normal(part.size, dtype=np.float32)
        x *= 0.02
        part[:] = x

    list(pool.map(fill, range((out.size + CHUNK - 1) // CHUNK)))
    return out.reshape(dims)


def copy_tokenizer(gguf, writer, source, vocab):
    reader = gguf.GGUFReader(source)
    copied = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        writer.add_key_value(key, value, vtype, sub_type=sub)
        copied += 1
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        sys.exit(f"make-shape-gguf: {source} has no tokenizer.ggml.tokens")
    if len(tokens.data) != vocab:
        sys.exit(f"make-shape-gguf: {source} has {len(tokens.data)} tokens, the shape a vocabulary of {vocab}")
    return copied


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="preset name with optional overrides, e.g. smollm2-1.7b or smollm2-135m,layers=2")
    ap.add_argument("out", type=Path, help="the GGUF file to write")
    ap.add_argument("--tokenizer-from", required=True, type=Path,
                    help="a GGUF whose tokenizer.* keys are copied (same vocabulary size)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tokenizer-only", action="store_true",
                    help="write only the tokenizer keys (no shape, no tensors): a small file to carry "
                         "and give as --tokenizer-from elsewhere")
    args = ap.parse_args()

    gguf = import_gguf()
    name, shape = parse_spec(args.spec, read_presets())
    start = time.time()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    if args.tokenizer_only:
        copied = copy_tokenizer(gguf, writer, args.tokenizer_from, shape["vocab"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        tmp.replace(args.out)
        print(f"make-shape-gguf: {args.out}: {copied} tokenizer keys from {args.tokenizer_from}",
              file=sys.stderr)
        return
    writer.add_type("model")
    writer.add_name(f"{args.spec} shape, seeded random weights (seed {args.seed})")
    writer.add_context_length(shape["context"])
    writer.add_embedding_length(shape["hidden"])
    writer.add_block_count(shape["layers"])
    writer.add_feed_forward_length(shape["intermediate"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_freq_base(shape["rope_theta"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(shape["vocab"])
    writer.add_rope_dimension_count(shape["hidden"] // shape["heads"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    copied = copy_tokenizer(gguf, writer, args.tokenizer_from, shape["vocab"])

    plan = tensors(shape)
    for tname, dims, kind in plan:
        dtype = np.float32 if kind == "norm" else np.float16
        writer.add_tensor_info(tname, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    params = 0
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for tname, dims, kind in plan:
            writer.write_tensor_data(values(tname, dims, kind, args.seed, pool))
            params += int(np.prod(dims))
    writer.close()
    tmp.replace(args.out)
    print(f"make-shape-gguf: {args.out}: {name} shape {shape}, {len(plan)} tensors, "
          f"{params / 1e6:.0f}M parameters, {copied} tokenizer keys from {args.tokenizer_from}, "
          f"{args.out.stat().st_size / 2**20:.0f} MiB in {time.time() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
