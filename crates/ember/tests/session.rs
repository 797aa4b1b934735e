//! Sessions over several turns, chat truncation, and what generation refuses: a tiny
//! random-init Llama (crates/ember-tests/fixtures/tiny) on flex in f32, greedy.

use std::path::{Path, PathBuf};

use ember::{CancelToken, DType, Engine, EngineConfig, GenerationConfig, Message, Role, Truncate};

type B = ember_flex::Backend;

fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ember-tests/fixtures/tiny/gqa-untied/hf")
}

fn load(dir: &Path, context: usize) -> ember::Result<Engine<B>> {
    let backend = ember::BackendConfig {
        name: ember::BackendName::Flex,
        device: "cpu".parse().unwrap(),
        dtype: DType::F32,
        ..ember::BackendConfig::default()
    };
    let (device, runtime) = ember_flex::init(&backend).unwrap();
    let mut config = EngineConfig::default();
    config.model.source = dir.display().to_string();
    config.model.context_length = Some(context);
    Engine::load(
        &config,
        &device,
        runtime,
        &ember_flex::capabilities(&device),
    )
}

fn msg(role: Role, content: &str) -> Message {
    Message {
        role,
        content: content.into(),
    }
}

fn greedy(messages: Vec<Message>, n: usize) -> GenerationConfig {
    GenerationConfig {
        messages,
        max_new_tokens: n,
        ..GenerationConfig::default()
    }
}

fn generate(
    session: &mut ember::Session<'_, B>,
    generation: &GenerationConfig,
) -> (String, ember::GenerationStats) {
    let mut text = String::new();
    let stats = session
        .generate(generation, &CancelToken::new(), &mut |t| text.push_str(t))
        .unwrap();
    (text, stats)
}

/// The case: `generate` again with the conversation so far plus a new turn runs only
/// the new turn, and answers what a fresh session given the whole conversation answers.
#[test]
fn a_second_generate_with_the_longer_chat_equals_a_fresh_session() {
    let engine = load(&tiny_dir(), 256).unwrap();
    let first = vec![msg(Role::User, "Where is the station?")];
    let mut session = engine.session();
    let (answer, _) = generate(&mut session, &greedy(first.clone(), 6));
    let mut both = first;
    both.push(msg(Role::Assistant, &answer));
    both.push(msg(Role::User, "And the market?"));
    let (second, stats) = generate(&mut session, &greedy(both.clone(), 6));

    let mut fresh = engine.session();
    let (want, want_stats) = generate(&mut fresh, &greedy(both, 6));
    assert_eq!(stats.tokens, want_stats.tokens);
    assert_eq!(second, want);
    // Only the new turn ran: the first stayed in the cache.
    assert!(stats.prompt_tokens < want_stats.prompt_tokens);
    // No second copy of the conversation in the cache.
    assert_eq!(session.len(), fresh.len());
    assert_eq!(session.tokens(), fresh.tokens());
}

#[test]
fn chat_appends_turns_and_runs_only_the_new_tokens() {
    let engine = load(&tiny_dir(), 256).unwrap();
    let generation = greedy(Vec::new(), 6);
    let cancel = CancelToken::new();
    let mut session = engine.session();
    let turn1 = [msg(Role::User, "Where is the station?")];
    let first = session
        .chat(&turn1, &generation, &cancel, &mut |_| {})
        .unwrap();
    assert_eq!(first.cached_tokens, 0);
    let after_first = session.len();
    let second = session
        .chat(
            &[msg(Role::User, "And the market?")],
            &generation,
            &cancel,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(session.messages().len(), 4);
    assert_eq!(session.messages()[1].role, Role::Assistant);

    // One fresh session fed the same conversation gives the same answer and cache.
    let mut fresh = engine.session();
    let whole = greedy(session.messages()[..3].to_vec(), 6);
    let (_, want) = generate(&mut fresh, &whole);
    assert_eq!(second.tokens, want.tokens);
    assert_eq!(session.tokens(), fresh.tokens());
    // The first turn stayed in the cache: only the new tokens ran.
    assert!(second.cached_tokens > 0 && second.cached_tokens <= after_first);
    assert_eq!(
        second.cached_tokens + second.prompt_tokens,
        want.prompt_tokens
    );
}

/// A rendering that does not extend the cache (here: another conversation) starts over.
#[test]
fn a_chat_that_does_not_extend_the_cache_runs_from_the_start() {
    let engine = load(&tiny_dir(), 256).unwrap();
    let mut session = engine.session();
    generate(
        &mut session,
        &greedy(vec![msg(Role::User, "Where is the station?")], 4),
    );
    let other = greedy(vec![msg(Role::User, "Who painted this?")], 4);
    let (_, stats) = generate(&mut session, &other);
    let mut fresh = engine.session();
    let (_, want) = generate(&mut fresh, &other);
    assert_eq!(stats.cached_tokens, 0);
    assert_eq!(stats.tokens, want.tokens);
    assert_eq!(session.tokens(), fresh.tokens());
}

/// An answer whose text does not encode back to the tokens generated (here: bytes that are
/// no UTF-8 text, printed as U+FFFD) leaves a cache the next rendering does not extend: the
/// chat runs from the start, with the answer a fresh session gives.
#[test]
fn an_answer_that_does_not_encode_back_runs_the_next_turn_from_the_start() {
    let engine = load(&tiny_dir(), 256).unwrap();
    let generation = greedy(Vec::new(), 6);
    let cancel = CancelToken::new();
    let mut session = engine.session();
    let turn1 = [
        msg(Role::System, "You answer briefly."),
        msg(Role::User, "Where is the station?"),
    ];
    session
        .chat(&turn1, &generation, &cancel, &mut |_| {})
        .unwrap();
    assert!(session.messages()[2].content.contains('\u{fffd}'));
    let second = session
        .chat(
            &[msg(Role::User, "And the market?")],
            &generation,
            &cancel,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(second.cached_tokens, 0);
    let mut fresh = engine.session();
    let (_, want) = generate(&mut fresh, &greedy(session.messages()[..4].to_vec(), 6));
    assert_eq!(second.tokens, want.tokens);
    assert_eq!(session.tokens(), fresh.tokens());
}

fn long_chat() -> Vec<Message> {
    let mut messages = vec![msg(Role::System, "You are a terse guide.")];
    for i in 0..6 {
        messages.push(msg(
            Role::User,
            &format!("Question {i}: where is the old station and the market?"),
        ));
        messages.push(msg(Role::Assistant, &format!("Answer {i}: by the river.")));
    }
    messages.push(msg(Role::User, "And the museum?"));
    messages
}

/// `truncate = "left"` on a chat drops whole earlier turns, never the template's start nor
/// the system prompt.
#[test]
fn left_truncation_of_a_chat_keeps_the_system_prompt_and_the_template() {
    let engine = load(&tiny_dir(), 96).unwrap();
    let tokenizer = engine.tokenizer();
    let messages = long_chat();
    let whole = tokenizer
        .encode(&tokenizer.apply_chat_template(&messages).unwrap(), false)
        .unwrap();
    assert!(whole.len() > 96, "the chat must overflow the context");
    let mut generation = greedy(messages.clone(), 4);
    generation.truncate = Truncate::Left;
    let mut session = engine.session();
    let (_, stats) = generate(&mut session, &generation);
    assert!(stats.truncated_tokens > 0);
    // The cache starts with the system turn, rendered, and ends the prompt with the last
    // user turn and the assistant's header.
    let system = tokenizer
        .encode(
            "<|im_start|>system\nYou are a terse guide.<|im_end|>\n",
            false,
        )
        .unwrap();
    assert!(
        session.tokens().starts_with(&system),
        "{:?}",
        tokenizer.decode(session.tokens())
    );
    let tail = tokenizer
        .encode(
            "<|im_start|>user\nAnd the museum?<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let prompt = &session.tokens()[..stats.prompt_tokens];
    assert!(prompt.ends_with(&tail));
    assert_eq!(whole.len() - stats.truncated_tokens, stats.prompt_tokens);
}

#[test]
fn a_chat_whose_last_turn_alone_overflows_is_an_error() {
    let engine = load(&tiny_dir(), 32).unwrap();
    let mut messages = long_chat();
    messages.push(msg(Role::User, &"a very long question ".repeat(20)));
    let mut generation = greedy(messages, 4);
    generation.truncate = Truncate::Left;
    let err = engine
        .session()
        .generate(&generation, &CancelToken::new(), &mut |_| {})
        .unwrap_err();
    let m = err.to_string();
    assert!(
        m.contains("the system prompt and the last turn alone are") && m.contains("holds 32"),
        "{m}"
    );
}

/// A copy of the tiny model's directory in a fresh temporary directory, with `edit` applied.
fn tiny_copy(name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(tiny_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    edit(&dir);
    dir
}

/// Overwrites every value of the F32 tensor `name` in a safetensors file with `value`.
fn fill_tensor(path: &Path, name: &str, value: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let info = &header[name];
    assert_eq!(info["dtype"], "F32", "{name}");
    let start = 8 + header_len + info["data_offsets"][0].as_u64().unwrap() as usize;
    let end = 8 + header_len + info["data_offsets"][1].as_u64().unwrap() as usize;
    for chunk in bytes[start..end].chunks_exact_mut(4) {
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn nan_logits_are_an_error_naming_them() {
    let dir = tiny_copy("nan-logits", |dir| {
        fill_tensor(
            &dir.join("model.safetensors"),
            "model.norm.weight",
            f32::NAN,
        )
    });
    let engine = load(&dir, 64).unwrap();
    let generation = greedy(vec![msg(Role::User, "Where is the station?")], 4);
    let result = engine
        .session()
        .generate(&generation, &CancelToken::new(), &mut |_| {});
    std::fs::remove_dir_all(&dir).ok();
    let m = result.unwrap_err().to_string();
    assert!(
        m.contains("the logits") && m.contains("NaN or infinite"),
        "{m}"
    );
}

#[test]
fn an_end_of_sequence_id_outside_the_vocabulary_is_refused_at_load() {
    let dir = tiny_copy("eos-outside", |dir| {
        let path = dir.join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json["eos_token_id"] = 5000.into();
        std::fs::write(&path, json.to_string()).unwrap();
    });
    let result = load(&dir, 64);
    std::fs::remove_dir_all(&dir).ok();
    let m = result.unwrap_err().to_string();
    assert!(
        m.contains("end-of-sequence token id 5000") && m.contains("vocabulary of 320"),
        "{m}"
    );
}
