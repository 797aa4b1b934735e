//! Model families, one file each, and the registry that maps checkpoint names to them.

pub mod bert;
pub mod llama;
pub mod presets;

/// The model families Ember implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama-family decoders (`ember run`, [`crate::Engine`]).
    Llama,
    /// BERT encoders (`ember embed`, [`crate::Embedder`]).
    Bert,
}

impl Architecture {
    /// Names accepted in GGUF `general.architecture` or `config.json` `architectures[0]`.
    const NAMES: &'static [(&'static str, Architecture)] = &[
        ("llama", Architecture::Llama),
        ("LlamaForCausalLM", Architecture::Llama),
        ("bert", Architecture::Bert),
        ("BertModel", Architecture::Bert),
        ("BertForMaskedLM", Architecture::Bert),
    ];

    /// The family of a checkpoint's declared architecture.
    pub fn from_name(name: &str) -> crate::Result<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| crate::Error::UnsupportedArchitecture {
                found: name.into(),
                supported: Self::NAMES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// The architecture a Hugging Face `config.json` declares: `architectures[0]`, else
/// `model_type`.
pub fn declared_name(config_json: &serde_json::Value) -> Option<&str> {
    config_json
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .or_else(|| config_json.get("model_type").and_then(|a| a.as_str()))
}

/// Fails unless `found` is `want`, saying which command runs what was found.
pub fn expect(
    found: Architecture,
    want: Architecture,
    path: &std::path::Path,
) -> crate::Result<()> {
    if found == want {
        return Ok(());
    }
    let what = match found {
        Architecture::Llama => "a decoder (text generation): run it with `ember run`",
        Architecture::Bert => "an encoder (embeddings): run it with `ember embed`",
    };
    Err(crate::Error::model(path, format!("this model is {what}")))
}
