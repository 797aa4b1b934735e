//! Tokens as an async stream: a session that holds a handle to its engine
//! ([`Engine::shared_session`]) moves to a thread of its own ([`Session::into_stream`]),
//! and an async task consumes its tokens (ids and text) as they come. Any executor works;
//! this one uses futures-lite's `block_on`. Run:
//! `cargo run -p ember --example async_stream -- configs/cpu-f32.toml`.

use std::sync::Arc;

use ember::{Engine, EngineConfig};
use futures_lite::StreamExt;

fn main() -> ember::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "configs/cpu-f32.toml".into());
    let config = EngineConfig::from_file(path.as_ref())?;
    let (device, runtime) = ember_flex::init(&config.backend)?;
    let capabilities = ember_flex::capabilities(&device);
    let engine = Arc::new(Engine::<ember_flex::Backend>::load(
        &config,
        &device,
        runtime,
        &capabilities,
    )?);
    let prompt = engine.prompt_tokens(&config.generation)?;
    let session = engine.shared_session();
    let (tokens, handle) = session.into_stream(prompt, config.generation.clone());
    futures_lite::future::block_on(async {
        futures_lite::pin!(tokens);
        while let Some(token) = tokens.next().await {
            let token = token?;
            print!("{}", token.text);
            if let Some(id) = token.id {
                eprint!("[{id}]");
            }
        }
        ember::Result::Ok(())
    })?;
    let (_session, stats) = handle.finish()?;
    println!(
        "\n{} tokens, stopped by {:?}",
        stats.generated_tokens, stats.finish
    );
    Ok(())
}
