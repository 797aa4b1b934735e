//! Tokenization (the `tokenizers` crate), chat templates (Jinja, through minijinja) and
//! streaming detokenization that never emits broken UTF-8.

use std::path::Path;

use serde_json::{json, Value as Json};

use crate::config::Message;
use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;

/// A model's tokenizer with its special tokens and chat template.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// Token ids that end generation.
    eos_ids: Vec<u32>,
    bos_token: String,
    eos_token: String,
    /// Prepend `bos` to raw prompts (GGUF `tokenizer.ggml.add_bos_token`).
    add_bos: Option<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// A stand-in for synthetic models: one word per id (`t0 t1 ...`), no template, no end
    /// token, so that generation runs for as many tokens as asked.
    pub fn synthetic(vocab_size: usize) -> Result<Self> {
        let vocab: serde_json::Map<String, Json> = (0..vocab_size)
            .map(|i| (format!("t{i}"), Json::from(i)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "decoder": null,
        });
        let inner = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
            .map_err(|e| Error::Tokenizer(format!("synthetic tokenizer: {e}")))?;
        Ok(Self {
            inner,
            eos_ids: Vec::new(),
            bos_token: String::new(),
            eos_token: String::new(),
            add_bos: None,
            chat_template: None,
        })
    }

    /// Reads `tokenizer.json`, `tokenizer_config.json` (template, special tokens) and the
    /// end-of-sequence ids of `config.json` / `generation_config.json` from a directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::model(dir, "tokenizer.json is missing"));
        }
        let inner = read_tokenizer_json(&path)?;
        let read_json = |name: &str| -> Result<Json> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(Json::Null);
            }
            let text = std::fs::read_to_string(&p).map_err(Error::io(&p))?;
            serde_json::from_str(&text).map_err(|e| Error::model(&p, format!("invalid JSON: {e}")))
        };
        let tok_config = read_json("tokenizer_config.json")?;
        let token_text = |v: &Json| -> Option<String> {
            v.as_str()
                .map(String::from)
                .or_else(|| v.get("content").and_then(Json::as_str).map(String::from))
        };
        let bos_token = tok_config
            .get("bos_token")
            .and_then(token_text)
            .unwrap_or_default();
        let eos_token = tok_config
            .get("eos_token")
            .and_then(token_text)
            .unwrap_or_default();
        let chat_template = match tok_config.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Json::as_str))
                .map(String::from),
            _ => None,
        };
        // transformers >= 4.43 may write the template to its own file instead.
        let template_file = dir.join("chat_template.jinja");
        let chat_template = match chat_template {
            Some(t) => Some(t),
            None if template_file.is_file() => {
                Some(std::fs::read_to_string(&template_file).map_err(Error::io(&template_file))?)
            }
            None => None,
        };
        let mut eos_ids = Vec::new();
        for name in ["generation_config.json", "config.json"] {
            match read_json(name)?.get("eos_token_id") {
                Some(Json::Number(n)) => eos_ids.extend(n.as_u64().map(|v| v as u32)),
                Some(Json::Array(list)) => {
                    eos_ids.extend(list.iter().filter_map(Json::as_u64).map(|v| v as u32))
                }
                _ => {}
            }
            if !eos_ids.is_empty() {
                break;
            }
        }
        if let Some(id) = inner.token_to_id(&eos_token) {
            eos_ids.push(id);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Self {
            inner,
            eos_ids,
            bos_token,
            eos_token,
            add_bos: None,
            chat_template,
        })
    }

    /// Builds a byte-level BPE tokenizer from GGUF `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path();
        let g = |e| Error::Gguf {
            path: path.into(),
            error: e,
        };
        let model = file.get_str("tokenizer.ggml.model").map_err(g)?;
        let tokens = file.get_strings("tokenizer.ggml.tokens").map_err(g)?;
        let types = file
            .get_ints("tokenizer.ggml.token_type")
            .unwrap_or_default();
        let inner = match model {
            "gpt2" => gpt2_from_gguf(file, &tokens, &types)?,
            "llama" => sentencepiece_from_gguf(file, &tokens, &types)?,
            other => {
                return Err(Error::model(
                    path,
                    format!("tokenizer.ggml.model `{other}` cannot be built from GGUF (supported: gpt2, llama); use a Hugging Face directory with tokenizer.json"),
                ))
            }
        };
        let id_of = |key: &str| file.get_u64(key).ok().map(|v| v as u32);
        let text_of = |id: Option<u32>| {
            id.and_then(|i| tokens.get(i as usize))
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        let bos = id_of("tokenizer.ggml.bos_token_id");
        let eos = id_of("tokenizer.ggml.eos_token_id");
        // An id past the vocabulary stays, for the load to reject (it could never be
        // generated, so generation could never stop on it).
        let mut eos_ids: Vec<u32> = [eos, id_of("tokenizer.ggml.eot_token_id")]
            .into_iter()
            .flatten()
            .collect();
        // End-of-turn control tokens end generation too, as llama.cpp's vocabulary marks them
        // (a chat model's answer ends with its turn, not with `eos`).
        eos_ids.extend(tokens.iter().enumerate().filter_map(|(id, &tok)| {
            let control = types.get(id) == Some(&3);
            (control && END_OF_TURN.contains(&tok)).then_some(id as u32)
        }));
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
            Ok(crate::format::gguf::Value::Bool(true)) => bos,
            _ => None,
        };
        Ok(Self {
            inner,
            eos_ids,
            bos_token: text_of(bos),
            eos_token: text_of(eos),
            add_bos,
            chat_template: file
                .get_str("tokenizer.chat_template")
                .ok()
                .map(String::from),
        })
    }

    /// Token ids of `text`. `special` adds the model's BOS/EOS conventions, as Hugging Face
    /// does for a raw prompt; chat templates already contain them.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, special).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if let (true, Some(bos)) = (special, self.add_bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Text of `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether the model ships a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Uses `template` when the checkpoint carries no chat template of its own (a family's
    /// known format, [`crate::models::LoadDecoder::default_chat_template`]).
    pub fn or_chat_template(mut self, template: Option<&str>) -> Self {
        if self.chat_template.is_none() {
            self.chat_template = template.map(String::from);
        }
        self
    }

    /// Renders `messages` through the model's chat template, ending with the assistant's turn.
    pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String> {
        let source = self.chat_template.as_deref().ok_or_else(|| {
            Error::Template(
                "this model has no chat template; use generation.prompt instead of messages".into(),
            )
        })?;
        render_template(source, messages, &self.bos_token, &self.eos_token)
    }
}

/// A byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) from GGUF metadata.
fn gpt2_from_gguf(
    file: &GgufFile,
    tokens: &[&str],
    types: &[i64],
) -> Result<tokenizers::Tokenizer> {
    let path = file.path();
    let g = |e| Error::Gguf {
        path: path.into(),
        error: e,
    };
    let merges = file.get_strings("tokenizer.ggml.merges").map_err(g)?;
    let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre {
            "default" | "gpt-2" | "gpt2" => byte_level.clone(),
            "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level.clone()]}),
            "llama-bpe" | "llama3" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
            other => {
                return Err(Error::model(
                    path,
                    format!("tokenizer.ggml.pre `{other}` is not supported (supported: default, gpt-2, smollm, llama-bpe)"),
                ))
            }
        };
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, &tok) in tokens.iter().enumerate() {
        vocab.insert(tok.to_string(), json!(id));
        // 3: control, 4: user-defined (llama.cpp's llama_token_type).
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == 3}),
            );
        }
    }
    let doc = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": null, "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    doc.to_string().parse().map_err(|e| {
        Error::model(
            path,
            format!("cannot build the tokenizer from GGUF metadata: {e}"),
        )
    })
}

/// A SentencePiece tokenizer (`tokenizer.ggml.model = "llama"`: tokens and scores, byte
/// fallback, no merges) from GGUF metadata, as llama.cpp's `llm_tokenizer_spm` runs it:
/// the text's spaces become `▁`, its characters are merged pairwise, highest-scoring merged
/// token first, and characters no token covers become `<0xXX>` byte tokens.
///
/// Expressed as the `tokenizers` crate's BPE with byte fallback, whose merges are every
/// split of a token into two tokens, ranked by the merged token's score (how
/// `transformers` converts SentencePiece models). Control and user-defined tokens are added
/// tokens, matched whole in the text before it is split. Checked against llama.cpp's
/// `llama-tokenize` on the same file (crates/ember-tests, Gemma 3).
fn sentencepiece_from_gguf(
    file: &GgufFile,
    tokens: &[&str],
    types: &[i64],
) -> Result<tokenizers::Tokenizer> {
    use tokenizers::decoders::{
        byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence, strip::Strip,
    };
    use tokenizers::normalizers::{Prepend, Replace};
    use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

    let path = file.path();
    let g = |e| Error::Gguf {
        path: path.into(),
        error: e,
    };
    let scores = file.get_floats("tokenizer.ggml.scores").map_err(g)?;
    if scores.len() != tokens.len() {
        return Err(Error::model(
            path,
            format!(
                "tokenizer.ggml.scores has {} entries for {} tokens",
                scores.len(),
                tokens.len()
            ),
        ));
    }
    let built = |e: tokenizers::Error| {
        Error::model(
            path,
            format!("cannot build the SentencePiece tokenizer: {e}"),
        )
    };
    let mut vocab = tokenizers::models::bpe::Vocab::with_capacity(tokens.len());
    for (id, &tok) in tokens.iter().enumerate() {
        // A duplicate keeps its first id, as llama.cpp's text-to-token map does.
        vocab.entry(tok.to_string()).or_insert(id as u32);
    }
    // 1: normal, 6: byte (llama.cpp's llama_token_type); only these take part in merges.
    let mergeable = |id: usize| matches!(types.get(id).copied().unwrap_or(1), 1 | 6);
    let mut merges: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, &tok) in tokens.iter().enumerate() {
        if !mergeable(id) || vocab.get(tok) != Some(&(id as u32)) {
            continue;
        }
        for (at, _) in tok.char_indices().skip(1) {
            let (left, right) = tok.split_at(at);
            if let (Some(&l), Some(_)) = (vocab.get(left), vocab.get(right)) {
                merges.push((scores[id], l, left.to_string(), right.to_string()));
            }
        }
    }
    // Highest score first; for one merged token reached by several splits, the one with the
    // shorter left part first (llama.cpp merges the leftmost pair first on ties).
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.len().cmp(&b.2.len())));
    let merges = merges.into_iter().map(|(_, _, l, r)| (l, r)).collect();
    let model = tokenizers::models::bpe::BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true)
        .build()
        .map_err(built)?;
    let mut inner = tokenizers::Tokenizer::new(model);
    let space_prefix = matches!(
        file.get("tokenizer.ggml.add_space_prefix"),
        Ok(crate::format::gguf::Value::Bool(true))
    );
    let replace = NormalizerWrapper::Replace(Replace::new(" ", "\u{2581}").map_err(built)?);
    let mut decoders = vec![
        DecoderWrapper::Replace(
            tokenizers::normalizers::Replace::new("\u{2581}", " ").map_err(built)?,
        ),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if space_prefix {
        let prepend = NormalizerWrapper::Prepend(Prepend::new("\u{2581}".into()));
        inner.with_normalizer(Some(NormalizerWrapper::Sequence(
            tokenizers::normalizers::Sequence::new(vec![prepend, replace]),
        )));
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    } else {
        inner.with_normalizer(Some(replace));
    }
    inner.with_decoder(Some(DecoderWrapper::Sequence(Sequence::new(decoders))));
    // 3: control, 4: user-defined.
    let added: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| matches!(types.get(*id).copied(), Some(3 | 4)))
        .map(|(id, &tok)| {
            AddedToken::from(tok.to_string(), types.get(id) == Some(&3)).normalized(false)
        })
        .collect();
    inner.add_tokens(&added);
    Ok(inner)
}

/// Control tokens that end a chat turn (llama.cpp's end-of-generation list, in part).
const END_OF_TURN: &[&str] = &[
    "<|eot_id|>",
    "<end_of_turn>",
    "<|im_end|>",
    "<|end|>",
    "<|endoftext|>",
];

/// Reads a `tokenizer.json`. The `tokenizers` crate panics on some malformed files (0.22:
/// `expect("Helper")` on a decoder it cannot read, found by the `hf_dir` fuzz target); such a
/// panic is caught here and becomes an error naming the file, like any other bad input.
pub fn read_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes));
    match parsed {
        Ok(Ok(tokenizer)) => Ok(tokenizer),
        Ok(Err(e)) => Err(Error::model(path, format!("invalid tokenizer.json: {e}"))),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(Error::model(
                path,
                format!("invalid tokenizer.json: the tokenizers crate failed on it ({why})"),
            ))
        }
    }
}

/// Llama 3's pre-tokenizer split pattern.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Template instructions allowed for a render, plus per message ([`render_template`]).
const TEMPLATE_FUEL_BASE: u64 = 100_000;
const TEMPLATE_FUEL_PER_MESSAGE: u64 = 10_000;

/// Renders a Hugging Face chat template with `add_generation_prompt = true`.
pub fn render_template(source: &str, messages: &[Message], bos: &str, eos: &str) -> Result<String> {
    use minijinja::{context, Environment, ErrorKind};
    let mut env = Environment::new();
    // A template comes with the model file, from whoever made it: bound the work it may do
    // (real chat templates use a few hundred instructions per message).
    env.set_fuel(Some(
        TEMPLATE_FUEL_BASE + TEMPLATE_FUEL_PER_MESSAGE * messages.len() as u64,
    ));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_template("chat", source)
        .map_err(|e| Error::Template(format!("cannot parse: {e}")))?;
    let template = env
        .get_template("chat")
        .map_err(|e| Error::Template(e.to_string()))?;
    template
        .render(context! {
            messages => messages.iter().map(|m| context!{role => m.role, content => m.content}).collect::<Vec<_>>(),
            add_generation_prompt => true,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| Error::Template(format!("cannot render: {e}")))
}

/// Turns a stream of token ids into text pieces, holding back bytes that do not yet form
/// complete UTF-8 characters (after candle's `TokenOutputStream`).
#[derive(Debug, Default)]
pub struct TokenStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl TokenStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; returns the text that became complete, if any.
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<Option<String>> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        self.ids.push(id);
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            let piece = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(piece))
        } else {
            Ok(None)
        }
    }

    /// Whatever text is still held back (at the end of generation).
    pub fn flush(&mut self, tokenizer: &TextTokenizer) -> Result<Option<String>> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        self.read = self.ids.len();
        if now.len() > before.len() && now.is_char_boundary(before.len()) {
            Ok(Some(now[before.len()..].to_string()))
        } else {
            Ok(None)
        }
    }

    /// Every id pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: &str) -> Vec<Message> {
        vec![Message {
            role: crate::config::Role::User,
            content: content.into(),
        }]
    }

    #[test]
    fn a_template_renders_messages() {
        let out = render_template(
            "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}",
            &user("hi"),
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(out, "<s>[user] hi");
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel() {
        let endless =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let err = render_template(endless, &user("hi"), "", "").unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
    }

    #[test]
    fn a_template_error_names_the_problem() {
        let err = render_template(
            "{{ raise_exception('no system role') }}",
            &user("x"),
            "",
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
        let err = render_template("{% for %}", &user("x"), "", "").unwrap_err();
        assert!(err.to_string().contains("cannot parse"), "{err}");
    }
}
