#!/usr/bin/env python3
"""Writes the hostile GGUF corpus: one small file per check of Ember's GGUF reader.

    python3 tests/reference/make_hostile_gguf.py

Each file is valid except for the one defect its name gives; crates/ember/tests/gguf_hostile.rs
maps every name to the error it must produce. Standard library only.
"""
import struct
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "crates" / "ember" / "tests" / "gguf_corpus"


def s(text: bytes | str) -> bytes:
    if isinstance(text, str):
        text = text.encode()
    return struct.pack("<Q", len(text)) + text


def kv(key, ty: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", ty) + payload


def u32_kv(key: str, value: int) -> bytes:
    return kv(key, 4, struct.pack("<I", value))


def tensor(name: str, dims, ty: int, offset: int) -> bytes:
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ty, offset)


def gguf(kvs=(), tensors=(), data=b"", version=3, n_tensors=None, n_kv=None, magic=b"GGUF", align=32) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    head += b"\0" * ((-len(head)) % align)
    return head + data


F32 = 0
Q4_0 = 2
ARCH = kv("general.architecture", 8, s("llama"))
ONE_F32 = tensor("a", [4], F32, 0)

CASES = {
    "bad_magic": gguf([ARCH], magic=b"GGML"),
    "unsupported_version": gguf([ARCH], version=99),
    "truncated_header": b"GGUF\x03\x00",
    "truncated_tensor_info": (b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + ARCH + ONE_F32)[:-5],
    "too_many_tensors": gguf([ARCH], n_tensors=1 << 40),
    "too_many_keys": gguf([ARCH], n_kv=1 << 40),
    "tensor_count_exceeds_file": gguf([ARCH], n_tensors=60000),
    "string_longer_than_file": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 60) + b"general",
    "array_longer_than_file": gguf([kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 4, 1 << 50))]),
    "unknown_value_type": gguf([kv("general.x", 99, b"\0" * 8)]),
    "unknown_array_element_type": gguf([kv("general.x", 9, struct.pack("<IQ", 77, 1))]),
    "nested_arrays_too_deep": gguf([kv("general.x", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 1) + b"\0" * 4)]),
    "key_not_utf8": gguf([kv(b"general.\xff\xfe", 4, b"\0" * 4)]),
    "duplicate_key": gguf([ARCH, ARCH]),
    "alignment_zero": gguf([ARCH, u32_kv("general.alignment", 0)]),
    "alignment_not_power_of_two": gguf([ARCH, u32_kv("general.alignment", 48)]),
    "alignment_wrong_type": gguf([ARCH, kv("general.alignment", 8, s("32"))]),
    "unknown_tensor_type": gguf([ARCH], [tensor("a", [4], 99, 0)], b"\0" * 32),
    "too_many_dims": gguf([ARCH], [tensor("a", [1, 1, 1, 1, 4], F32, 0)], b"\0" * 32),
    "zero_dim": gguf([ARCH], [tensor("a", [4, 0], F32, 0)], b"\0" * 32),
    "size_overflow": gguf([ARCH], [tensor("a", [1 << 40, 1 << 40], F32, 0)], b"\0" * 32),
    "block_size_mismatch": gguf([ARCH], [tensor("a", [33], Q4_0, 0)], b"\0" * 64),
    "misaligned_offset": gguf([ARCH], [tensor("a", [4], F32, 3)], b"\0" * 64),
    "tensor_past_end": gguf([ARCH], [tensor("a", [1024], F32, 0)], b"\0" * 64),
    "offset_past_end": gguf([ARCH], [tensor("a", [4], F32, 1 << 62)], b"\0" * 64),
    "overlapping_tensors": gguf([ARCH], [tensor("a", [16], F32, 0), tensor("b", [4], F32, 32)], b"\0" * 128),
    "duplicate_tensor": gguf([ARCH], [tensor("a", [4], F32, 0), tensor("a", [4], F32, 32)], b"\0" * 64),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.gguf"):
        old.unlink()
    for name, data in CASES.items():
        (OUT / f"{name}.gguf").write_bytes(data)
    print(f"{len(CASES)} files, {sum(map(len, CASES.values()))} bytes, in {OUT}")


if __name__ == "__main__":
    main()
