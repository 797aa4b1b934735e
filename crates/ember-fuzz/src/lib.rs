//! The code each fuzz target runs on one input, kept in a normal crate so that the committed
//! corpora and every input a fuzzer ever crashed on are replayed by `cargo test` on stable
//! Rust (tests/corpus.rs), while `cargo fuzz` (nightly, libFuzzer) drives the same functions
//! from `fuzz/`.
//!
//! Each function feeds its input to the public API the way a user's file or text would reach
//! it, and returns normally whatever the input: an `Err` is the expected outcome for garbage.
//! A panic, an abort (a huge allocation) or a hang is a finding.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ember::format::ct2::Ct2File;
use ember::format::gguf::GgufFile;
use ember::models::{Architecture, DecoderConfig, DecoderJob, LoadDecoder};
use ember::tokenizer::{render_template, TextTokenizer, TokenStream};
use ember::{CancelToken, DType, Engine, EngineConfig, GenerationConfig, Message};

/// Files of a Hugging Face model directory, in the order [`hf_dir`] reads their contents.
pub const HF_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
];

/// Separates the files packed into one [`hf_dir`] input.
pub const FILE_SEPARATOR: &[u8] = b"\n\0--ember-file--\0\n";

/// How far an input got: the replay tests check that the seeds reach the deepest stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reached {
    /// Rejected with an error at the first step.
    Rejected,
    /// Parsed (a file, a template, a config), but not loaded as a model.
    Parsed,
    /// Loaded as a model, but generation failed.
    Loaded,
    /// Loaded and generated.
    Generated,
}

/// Largest model the targets go on to load and run (weights); bigger valid ones stop at parsing.
const MAX_RUN_PARAMS: u128 = 1 << 22;

/// A GGUF file: parsed from memory, every tensor dequantized, its family's config (through
/// the registry) and tokenizer read from its metadata; when all of that holds and the model
/// is small, loaded from disk through [`Engine::load`] and run for two tokens.
pub fn gguf(data: &[u8]) -> Reached {
    let Ok(file) = GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") else {
        return Reached::Rejected;
    };
    for info in file.tensors() {
        let _ = file.dequantize(info);
    }
    let params = file
        .get_str("general.architecture")
        .ok()
        .and_then(|name| Architecture::from_name(name).ok())
        .and_then(|arch| {
            arch.load_decoder::<ember_flex::Backend, _>(DeclaredParams(&file))
                .ok()
        });
    if let Ok(tokenizer) = TextTokenizer::from_gguf(&file) {
        exercise_tokenizer(&tokenizer, "Hello, wörld! 日本語 🙂 <|im_start|>");
    }
    if params.is_some_and(|p| p <= MAX_RUN_PARAMS) {
        let dir = scratch_dir("gguf");
        let path = dir.join("model.gguf");
        if std::fs::write(&path, data).is_ok() {
            return load_and_run(&path);
        }
    }
    Reached::Parsed
}

/// A CTranslate2 `model.bin`: parsed from memory, every float variable read, every scalar
/// read as an integer.
pub fn ct2(data: &[u8]) -> Reached {
    let Ok(file) = Ct2File::from_bytes(data.to_vec(), "fuzz/model.bin") else {
        return Reached::Rejected;
    };
    for variable in file.variables() {
        if variable.shape.is_empty() {
            let _ = file.scalar_int(&variable.name);
        } else {
            let _ = file.read_f32(&variable.name);
        }
    }
    for alias in file.aliases().keys() {
        let _ = file.read_f32(alias);
    }
    Reached::Parsed
}

/// The weights a GGUF file's family config declares.
struct DeclaredParams<'a>(&'a GgufFile);

impl<B: burn::prelude::Backend> DecoderJob<B> for DeclaredParams<'_> {
    type Output = u128;
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn run<M: LoadDecoder<B>>(self) -> ember::Result<u128> {
        Ok(M::config_from_gguf(self.0)?.param_count())
    }
}

/// A Hugging Face directory packed as the contents of [`HF_FILES`] joined by
/// [`FILE_SEPARATOR`] (missing trailing parts: files absent), loaded through [`Engine::load`]
/// and, when it loads, run for two tokens through its chat template.
pub fn hf_dir(data: &[u8]) -> Reached {
    let dir = scratch_dir("hf");
    for (name, part) in HF_FILES.iter().zip(split(data, FILE_SEPARATOR)) {
        if std::fs::write(dir.join(name), part).is_err() {
            return Reached::Rejected;
        }
    }
    load_and_run(&dir)
}

/// Text and a chat template: the input is `template`, a line `---`, then a message. The
/// template is rendered over a short conversation holding the message, and the message goes
/// through a real tokenizer (encode, decode, streamed decode).
pub fn chat(data: &[u8]) -> Reached {
    let text = String::from_utf8_lossy(data);
    let (template, message) = text.split_once("\n---\n").unwrap_or(("", &text));
    let mut reached = Reached::Rejected;
    if !template.is_empty() {
        let messages = [
            Message {
                role: ember::Role::System,
                content: "You are terse.".into(),
            },
            Message {
                role: ember::Role::User,
                content: message.into(),
            },
        ];
        if render_template(template, &messages, "<s>", "</s>").is_ok() {
            reached = Reached::Parsed;
        }
    }
    if let Some(tokenizer) = fixture_tokenizer() {
        exercise_tokenizer(tokenizer, message);
    }
    reached
}

/// An engine config file (TOML), parsed and validated.
pub fn config(data: &[u8]) -> Reached {
    let Ok(text) = std::str::from_utf8(data) else {
        return Reached::Rejected;
    };
    match EngineConfig::from_toml(text, "fuzz.toml") {
        Ok(config) => {
            let _ = ember::source::ModelSource::parse(&config.model.source);
            Reached::Parsed
        }
        Err(_) => Reached::Rejected,
    }
}

fn exercise_tokenizer(tokenizer: &TextTokenizer, text: &str) {
    for special in [false, true] {
        let Ok(ids) = tokenizer.encode(text, special) else {
            continue;
        };
        let _ = tokenizer.decode(&ids);
        let mut stream = TokenStream::new();
        for &id in &ids {
            let _ = stream.push(tokenizer, id);
        }
        let _ = stream.flush(tokenizer);
    }
    let _ = tokenizer.decode(&[0, u32::MAX, tokenizer.vocab_size() as u32]);
}

/// Loads the model at `source` on flex (f32) and generates two tokens from a chat message.
fn load_and_run(source: &Path) -> Reached {
    let spec = ember::BackendConfig {
        name: ember::BackendName::Flex,
        device: ember::backend::DeviceSpec::Cpu,
        dtype: DType::F32,
        ..ember::BackendConfig::default()
    };
    let Ok((device, runtime)) = ember_flex::init(&spec) else {
        return Reached::Rejected;
    };
    let mut config = EngineConfig::default();
    config.model.source = source.display().to_string();
    config.model.context_length = Some(64);
    let capabilities = ember_flex::capabilities(&device);
    let Ok(engine) = Engine::<ember_flex::Backend>::load(&config, &device, runtime, &capabilities)
    else {
        return Reached::Parsed;
    };
    let generation = GenerationConfig {
        messages: vec![Message {
            role: ember::Role::User,
            content: "Hi".into(),
        }],
        max_new_tokens: 2,
        ..GenerationConfig::default()
    };
    match engine
        .session()
        .generate(&generation, &CancelToken::new(), &mut |_| {})
    {
        Ok(_) => Reached::Generated,
        Err(_) => Reached::Loaded,
    }
}

/// A tokenizer from the repository's tiny fixture (`TOKENIZER_JSON` overrides the path).
fn fixture_tokenizer() -> Option<&'static TextTokenizer> {
    static TOKENIZER: OnceLock<Option<TextTokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let dir = std::env::var_os("EMBER_FUZZ_TOKENIZER_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../ember-tests/fixtures/tiny/gqa-untied/hf")
                });
            TextTokenizer::from_hf_dir(&dir).ok()
        })
        .as_ref()
}

/// A directory of this process and thread, emptied.
fn scratch_dir(tag: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let dir =
        std::env::temp_dir().join(format!("ember-fuzz-{tag}-{}-{thread}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// `data` split at each `separator`.
pub fn split<'a>(data: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(separator.len()).position(|w| w == separator) {
        parts.push(&rest[..at]);
        rest = &rest[at + separator.len()..];
    }
    parts.push(rest);
    parts
}

/// Packs files for [`hf_dir`] (used to build its seed corpus).
pub fn pack(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(FILE_SEPARATOR)
}

/// Lets a fuzz target run on after a panic inside the `tokenizers` crate, which Ember catches
/// and turns into an error (`ember::tokenizer::read_tokenizer_json`; the crate panics on some
/// malformed `tokenizer.json`). libFuzzer's panic hook aborts on every panic, caught or not;
/// this hook passes any other panic on to it. Call it at the start of each input.
pub fn tolerate_caught_tokenizers_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tokenizers = info
                .location()
                .is_some_and(|l| l.file().contains("/tokenizers-"));
            if !in_tokenizers {
                fuzzer_hook(info);
            }
        }));
    });
}
