//! A multi-turn chat through the library: one session, each turn appended to the
//! conversation the session holds (earlier turns stay in its KV cache and are not run
//! again). Run: `cargo run -p ember --example chat -- configs/cpu-f32.toml`.

use ember::{CancelToken, Engine, EngineConfig, Message, Role};

fn main() -> ember::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "configs/cpu-f32.toml".into());
    let config = EngineConfig::from_file(path.as_ref())?;
    let (device, runtime) = ember_flex::init(&config.backend)?;
    let capabilities = ember_flex::capabilities(&device);
    let engine = Engine::<ember_flex::Backend>::load(&config, &device, runtime, &capabilities)?;
    let mut session = engine.session();
    let cancel = CancelToken::new();
    for question in [
        "My name is Ada. What is the capital of France?",
        "And of Italy?",
        "What is my name?",
    ] {
        println!("> {question}");
        let turn = Message {
            role: Role::User,
            content: question.into(),
        };
        let stats = session.chat(&[turn], &config.generation, &cancel, &mut |text| {
            print!("{text}")
        })?;
        println!(
            "\n({} new prompt tokens, {} from earlier turns in the cache, {} generated)\n",
            stats.prompt_tokens, stats.cached_tokens, stats.generated_tokens
        );
    }
    Ok(())
}
