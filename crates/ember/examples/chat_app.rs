//! A tiny app embedding Ember: load an engine once, answer several questions, each in its
//! own session, streaming the answers.
//!
//!     cargo run --release -p ember --example chat_app -- configs/cpu-f32.toml
//!
//! The backend comes from a backend crate (`ember-flex` here); the app code is generic.

use ember::{BackendJob, CancelToken, Capabilities, Engine, EngineConfig, Message, RuntimeInfo};

struct App {
    config: EngineConfig,
    questions: Vec<String>,
}

impl BackendJob for App {
    type Output = ember::Result<()>;

    fn run<B: burn::prelude::Backend>(
        self,
        device: B::Device,
        runtime: RuntimeInfo,
        capabilities: Capabilities<B>,
    ) -> ember::Result<()> {
        let engine = Engine::<B>::load(&self.config, &device, runtime, &capabilities)?;
        for question in self.questions {
            let mut generation = self.config.generation.clone();
            generation.prompt = None;
            generation.messages = vec![Message {
                role: ember::Role::User,
                content: question.clone(),
            }];
            println!("> {question}");
            let mut session = engine.session();
            let stats = session.generate(&generation, &CancelToken::new(), &mut |text| {
                print!("{text}")
            })?;
            println!(
                "\n[{} tokens, {:.1} tokens/s]\n",
                stats.generated_tokens,
                stats.decode_tps()
            );
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "configs/cpu-f32.toml".into());
    let config = EngineConfig::from_file(path.as_ref())?;
    let app = App {
        config: config.clone(),
        questions: vec!["What is 2 + 2?".into(), "Name a color of the sky.".into()],
    };
    ember_flex::run(&config.backend, app)??;
    Ok(())
}
