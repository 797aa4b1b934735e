#!/usr/bin/env python3
"""Writes the hostile CTranslate2 model.bin corpus (crates/ember/tests/ct2_corpus/): each
file is a small valid model.bin with one defect, named after it. crates/ember/tests/
ct2_hostile.rs checks that each is rejected with the error of its own defect.

The valid layout is the one CTranslate2's python/ctranslate2/specs/model_spec.py writes
(binary version 6). Run: python3 tests/reference/make_hostile_ct2.py (no dependencies);
with `--seeds DIR` it writes the ct2 fuzz target's seed inputs instead.
"""
import os
import struct
import sys

OUT = os.path.join(os.path.dirname(__file__), "../../crates/ember/tests/ct2_corpus")


def string(s, length=None, terminator=b"\0"):
    data = s.encode() if isinstance(s, str) else s
    n = len(data) + len(terminator) if length is None else length
    return struct.pack("<H", n) + data + terminator


def variable(name, dims, dtype=4, nbytes=None, data=None, rank=None):
    size = {0: 4, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2}.get(dtype, 2)
    count = 1
    for d in dims:
        count *= d
    if data is None:
        data = bytes(count * size)
    if nbytes is None:
        nbytes = len(data)
    out = string(name)
    out += struct.pack("<B", len(dims) if rank is None else rank)
    out += b"".join(struct.pack("<I", d) for d in dims)
    out += struct.pack("<B", dtype) + struct.pack("<I", nbytes) + data
    return out


def model(variables=None, aliases=None, version=6, count=None, alias_count=None, tail=b""):
    if variables is None:
        variables = [variable("w", [2, 3]), variable("heads", [], dtype=2)]
    if aliases is None:
        aliases = [string("tied") + string("w")]
    out = struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables) if count is None else count) + b"".join(variables)
    out += struct.pack("<I", len(aliases) if alias_count is None else alias_count)
    return out + b"".join(aliases) + tail


CASES = {
    "unsupported_version": model(version=99),
    "old_version": model(version=3),
    "truncated_header": model()[:6],
    "truncated_variable_data": model()[:-30],
    "string_longer_than_file": struct.pack("<I", 6) + struct.pack("<H", 60000) + b"Whisper",
    "string_without_nul": model(variables=[variable("w", [2, 3])]).replace(
        string("w"), string("w", terminator=b"x"), 1),
    "string_with_inner_nul": model(variables=[b"".join([string("a\0b")]) + b"\x00\x04" + struct.pack("<I", 2) + b"\0\0"]),
    "empty_string": model(variables=[struct.pack("<H", 0) + b"\x00\x04" + struct.pack("<I", 2) + b"\0\0"]),
    "name_not_utf8": model(variables=[variable(b"\xff\xfe".decode("latin1"), [1])]).replace(
        string("\xff\xfe"), string(b"\xff\xfe"), 1),
    "too_many_variables": model(count=0xFFFFFFFF),
    "variable_count_exceeds_file": model(count=1000),
    "too_many_aliases": model(alias_count=0xFFFFFFFF),
    "too_many_dims": model(variables=[variable("w", [1] * 9)]),
    "zero_dim": model(variables=[variable("w", [2, 0])]),
    "unknown_dtype": model(variables=[variable("w", [2], dtype=9, data=b"\0\0\0\0")]),
    "byte_count_too_small": model(variables=[variable("w", [2, 3], nbytes=6, data=bytes(6))]),
    "byte_count_overflows": model(variables=[variable("w", [0xFFFFFFFF] * 8, nbytes=4, data=bytes(4))]),
    "duplicate_variable": model(variables=[variable("w", [2, 3]), variable("w", [2, 3])]),
    "dangling_alias": model(aliases=[string("tied") + string("nothing")]),
    "alias_shadows_variable": model(aliases=[string("w") + string("heads")]),
    "trailing_bytes": model(tail=b"garbage"),
}


def seeds(out):
    """The fuzz target's seeds (`scripts/fuzz-seeds.sh`): the valid small file and a
    Whisper-shaped one (settings as scalars, a tied projection as an alias)."""
    os.makedirs(out, exist_ok=True)
    whisper = [
        variable("decoder/num_heads", [], dtype=2, data=struct.pack("<h", 2)),
        variable("decoder/activation", [], dtype=1, data=b"\x03"),
        variable("encoder/conv1/weight", [4, 2, 3], dtype=0),
        variable("decoder/embeddings/weight", [8, 4], dtype=5),
    ]
    tied = [string("decoder/projection/weight") + string("decoder/embeddings/weight")]
    for name, data in {"small": model(), "whisper-shaped": model(whisper, tied)}.items():
        with open(os.path.join(out, f"seed-{name}.bin"), "wb") as f:
            f.write(data)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        seeds(sys.argv[2])
        return
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        os.remove(os.path.join(OUT, name))
    for name, data in CASES.items():
        with open(os.path.join(OUT, f"{name}.bin"), "wb") as f:
            f.write(data)
    print(f"wrote {len(CASES)} files to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
