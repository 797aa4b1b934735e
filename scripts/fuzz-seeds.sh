#!/usr/bin/env bash
# Rebuilds the fuzz seed corpora (fuzz/corpus/<target>/seed-*) from the repository's fixtures
# and configs. Inputs the fuzzer adds beside them are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
tiny=crates/ember-tests/fixtures/tiny
for t in gguf hf_dir chat config ct2; do
  mkdir -p "fuzz/corpus/$t"
  rm -f "fuzz/corpus/$t"/seed-*
done
for v in "$tiny"/*/; do
  v=$(basename "$v")
  cp "$tiny/$v/model.gguf" "fuzz/corpus/gguf/seed-$v.gguf"
done
for f in crates/ember/tests/gguf_corpus/*.gguf; do
  cp "$f" "fuzz/corpus/gguf/hostile-$(basename "$f")"
done
for f in crates/ember/tests/ct2_corpus/*.bin; do
  cp "$f" "fuzz/corpus/ct2/hostile-$(basename "$f")"
done
python3 tests/reference/make_hostile_ct2.py --seeds fuzz/corpus/ct2
python3 - "$tiny" <<'PY'
import pathlib, sys
tiny = pathlib.Path(sys.argv[1])
sep = b"\n\0--ember-file--\0\n"  # ember_fuzz::FILE_SEPARATOR
files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
for v in sorted(p for p in tiny.iterdir() if p.is_dir()):
    parts = [(v / "hf" / f).read_bytes() for f in files]
    pathlib.Path(f"fuzz/corpus/hf_dir/seed-{v.name}.bin").write_bytes(sep.join(parts))
message = "Hello, wörld! 日本語 🙂 <|im_start|>user"
llama3 = ("{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
          "{{ raise_exception('unknown role') }}{% endif %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
          "+ m['content'] | trim + '<|eot_id|>' }}{% if loop.last and add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}{% endfor %}")
templates = {"tiny": (tiny / "gqa-untied/hf/chat_template.jinja").read_text(), "llama3": llama3}
for name, t in templates.items():
    pathlib.Path(f"fuzz/corpus/chat/seed-{name}.txt").write_text(t + "\n---\n" + message)
PY
for f in configs/*.toml; do
  cp "$f" "fuzz/corpus/config/seed-$(basename "$f")"
done
ls fuzz/corpus/* | head -50
