#!/usr/bin/env python3
"""F16 copies of the tiny GGUF fixtures (crates/ember-tests/fixtures/tiny/VARIANT/model.gguf ->
model-f16.gguf): every 2-D tensor stored as F16, the rest (norms) kept F32, metadata copied.
The suite's `tiny_gguf_kept_float_equals_dequantized` loads each copy with its weights kept as
stored and widened to f32; both must give the same logits (the reference is the same file read
the other way, so the copy needs no reference run of its own).

Uses gguf-py, the writer of llama.cpp's own converters (pip install gguf, or the copy vendored
in the llama-cpp-python sdist that scripts/build-llama-cpp.sh unpacks).
usage: tests/reference/make_tiny_f16_gguf.py VARIANT..."""
import sys

import numpy as np
import gguf

ROOT = "crates/ember-tests/fixtures/tiny"

for variant in sys.argv[1:]:
    src = f"{ROOT}/{variant}/model.gguf"
    reader = gguf.GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(f"{ROOT}/{variant}/model-f16.gguf", arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                value = [bytes(field.parts[i]).decode() for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_array(name, value)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(name, bytes(field.parts[-1]).decode())
        else:
            writer.add_key_value(name, field.parts[-1].tolist()[0], kind)
    for t in reader.tensors:
        # gguf-py's shapes are innermost-first; numpy's data is already row-major.
        data = np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        if data.ndim == 2:
            data = data.astype(np.float16)
        writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{variant}: {len(reader.tensors)} tensors -> {ROOT}/{variant}/model-f16.gguf", file=sys.stderr)
