//! Model families, one file each, and the registry that maps checkpoint names to them.

pub mod llama;
pub mod presets;

/// The model families Ember implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama-family decoders.
    Llama,
}

impl Architecture {
    /// Names accepted in GGUF `general.architecture` or `config.json` `architectures[0]`.
    const NAMES: &'static [(&'static str, Architecture)] = &[
        ("llama", Architecture::Llama),
        ("LlamaForCausalLM", Architecture::Llama),
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
