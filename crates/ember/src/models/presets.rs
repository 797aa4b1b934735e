//! Synthetic models for speed measurements: a published architecture and shape with seeded
//! random weights (like vLLM's dummy load format), so that `bench` can time 1B+ models on
//! machines that have no such file. Their outputs are meaningless; their speed is not.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::gguf::GgmlType;
use crate::format::quant::{quantize_blocks, unpack, Unpacked};
use crate::format::TensorStore;
use crate::models::llama::LlamaConfig;

/// A named shape: `model.source = "preset:NAME"`.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// The name used after `preset:`.
    pub name: &'static str,
    /// What it reproduces.
    pub about: &'static str,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    context: usize,
    rope_theta: f64,
    /// How its matrices are stored (`quant=q8_0` or `q4_0`; f32 when `None`).
    pub quant: Option<GgmlType>,
}

/// Every preset, with the shapes of the published `config.json` files.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "smollm2-135m",
        about: "HuggingFaceTB/SmolLM2-135M shape",
        hidden: 576,
        intermediate: 1536,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        vocab: 49152,
        context: 8192,
        rope_theta: 100_000.0,
        quant: None,
    },
    Preset {
        name: "smollm2-360m",
        about: "HuggingFaceTB/SmolLM2-360M shape",
        hidden: 960,
        intermediate: 2560,
        layers: 32,
        heads: 15,
        kv_heads: 5,
        vocab: 49152,
        context: 8192,
        rope_theta: 100_000.0,
        quant: None,
    },
    Preset {
        name: "smollm2-1.7b",
        about: "HuggingFaceTB/SmolLM2-1.7B shape",
        hidden: 2048,
        intermediate: 8192,
        layers: 24,
        heads: 32,
        kv_heads: 32,
        vocab: 49152,
        context: 8192,
        rope_theta: 130_000.0,
        quant: None,
    },
    Preset {
        name: "llama-3.2-1b",
        about: "meta-llama/Llama-3.2-1B shape (without llama3 RoPE scaling)",
        hidden: 2048,
        intermediate: 8192,
        layers: 16,
        heads: 32,
        kv_heads: 8,
        vocab: 128_256,
        context: 131_072,
        rope_theta: 500_000.0,
        quant: None,
    },
];

impl Preset {
    /// `NAME` or `NAME,key=value,...` with keys hidden, intermediate, layers, heads,
    /// kv_heads, vocab overriding the shape (for experiments at other sizes), and `quant`
    /// (`q8_0` or `q4_0`: every matrix stored in those ggml blocks, as a GGUF file of that
    /// type holds it, so that `weights = "keep"` keeps them quantized).
    pub fn parse(spec: &str) -> Result<Preset> {
        let mut parts = spec.split(',');
        let mut preset = *Self::find(parts.next().unwrap_or_default())?;
        for part in parts {
            let bad = || {
                Error::Source {
                source_spec: format!("preset:{spec}"),
                message: format!(
                    "bad override `{part}` (expected hidden, intermediate, layers, heads, kv_heads or vocab = a positive number, or quant = q8_0 or q4_0)"
                ),
            }
            };
            let (key, value) = part.split_once('=').ok_or_else(bad)?;
            if key == "quant" {
                preset.quant = Some(match value.to_ascii_lowercase().as_str() {
                    "q8_0" => GgmlType::Q8_0,
                    "q4_0" => GgmlType::Q4_0,
                    _ => return Err(bad()),
                });
                continue;
            }
            let value: usize = value.parse().ok().filter(|&v| v > 0).ok_or_else(bad)?;
            match key {
                "hidden" => preset.hidden = value,
                "intermediate" => preset.intermediate = value,
                "layers" => preset.layers = value,
                "heads" => preset.heads = value,
                "kv_heads" => preset.kv_heads = value,
                "vocab" => preset.vocab = value,
                _ => return Err(bad()),
            }
        }
        preset
            .config()
            .validate()
            .map_err(|message| Error::Source {
                source_spec: format!("preset:{spec}"),
                message,
            })?;
        Ok(preset)
    }

    /// The preset called `name`; the error lists them all.
    pub fn find(name: &str) -> Result<&'static Preset> {
        PRESETS
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Source {
                source_spec: format!("preset:{name}"),
                message: format!(
                    "unknown preset (known: {})",
                    PRESETS
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// The model config this preset stands for (embeddings tied, as in all four).
    pub fn config(&self) -> LlamaConfig {
        LlamaConfig {
            hidden_size: self.hidden,
            intermediate_size: self.intermediate,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: Some(self.kv_heads),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: self.rope_theta,
            rope_scaling: None,
            max_position_embeddings: self.context,
            vocab_size: self.vocab,
            model_type: "llama".into(),
            attention_bias: None,
            tie_word_embeddings: true,
            rope_freq_factors: None,
        }
    }
}

/// Seeded random weights under the Hugging Face Llama names: N(0, 0.02) matrices, norm
/// weights of one. The same seed gives the same weights on every machine.
pub struct SyntheticStore {
    path: PathBuf,
    tensors: Vec<(String, Vec<usize>)>,
    seed: u64,
    quant: Option<GgmlType>,
}

impl SyntheticStore {
    /// The tensors `config` needs, named as in a Hugging Face checkpoint.
    pub fn new(name: &str, config: &LlamaConfig, seed: u64) -> Self {
        let (h, inter, hd) = (
            config.hidden_size,
            config.intermediate_size,
            config.head_dim(),
        );
        let (q, kv) = (config.num_attention_heads * hd, config.kv_heads() * hd);
        let mut tensors = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![config.vocab_size, h],
        )];
        for i in 0..config.num_hidden_layers {
            let p = |n: &str| format!("model.layers.{i}.{n}");
            tensors.extend([
                (p("input_layernorm.weight"), vec![h]),
                (p("self_attn.q_proj.weight"), vec![q, h]),
                (p("self_attn.k_proj.weight"), vec![kv, h]),
                (p("self_attn.v_proj.weight"), vec![kv, h]),
                (p("self_attn.o_proj.weight"), vec![h, q]),
                (p("post_attention_layernorm.weight"), vec![h]),
                (p("mlp.gate_proj.weight"), vec![inter, h]),
                (p("mlp.up_proj.weight"), vec![inter, h]),
                (p("mlp.down_proj.weight"), vec![h, inter]),
            ]);
        }
        tensors.push(("model.norm.weight".into(), vec![h]));
        if !config.tie_word_embeddings {
            tensors.push(("lm_head.weight".into(), vec![config.vocab_size, h]));
        }
        Self {
            path: PathBuf::from(format!("preset:{name}")),
            tensors,
            seed,
            quant: None,
        }
    }

    /// The same weights with every matrix stored as ggml blocks of `quant` (values read
    /// back through them).
    pub fn quantized(mut self, quant: Option<GgmlType>) -> Self {
        self.quant = quant;
        self
    }

    /// The random values of tensor `name` (`len` of them).
    fn values(&self, name: &str, len: usize) -> Vec<f32> {
        let stream = self.seed
            ^ name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        // Sum of four uniforms on [-0.5, 0.5): variance 1/3, near-normal; scaled to std 0.02.
        // Chunks have their own streams, so the values do not depend on the thread count.
        let scale = 0.02 * 3f32.sqrt();
        let mut values = vec![0f32; len];
        values
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, out)| {
                let mut state = stream ^ (chunk as u64).wrapping_mul(0xA076_1D64_78BD_642F);
                for v in out {
                    let r = splitmix(&mut state);
                    let sum: f32 = (0..4)
                        .map(|k| ((r >> (16 * k)) & 0xFFFF) as f32 / 65536.0 - 0.5)
                        .sum();
                    *v = sum * scale;
                }
            });
        values
    }

    /// Matrix `name` as blocks of the store's quantized type, when it has one.
    fn blocks(&self, name: &str) -> Option<Unpacked> {
        let quant = self.quant?;
        let shape = self.shape(name)?;
        // Whole blocks per row (a shape override may leave a row with a partial one).
        if shape.len() != 2 || !shape[1].is_multiple_of(32) {
            return None;
        }
        let len = shape.iter().product();
        let values = self.values(name, len);
        // Blocks of 32 per chunk of rows, on all cores; in row order.
        let per = (CHUNK / 32) * 32;
        let parts: Vec<Unpacked> = values
            .par_chunks(per)
            .map(|part| quantize_blocks(quant, part).and_then(|b| unpack(quant, &b, part.len())))
            .collect::<Option<_>>()?;
        let mut whole = parts.first()?.clone();
        for part in &parts[1..] {
            whole.u.extend_from_slice(&part.u);
            whole.scale.extend_from_slice(&part.scale);
            whole.min.extend_from_slice(&part.min);
        }
        Some(whole)
    }
}

/// Values per independently seeded chunk.
const CHUNK: usize = 1 << 16;

/// SplitMix64: a small, fast, well-mixed generator; one stream per tensor.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TensorStore for SyntheticStore {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|(n, _)| n.clone()).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    }

    fn read(&self, name: &str) -> Result<Option<Vec<f32>>> {
        let Some(shape) = self.shape(name) else {
            return Ok(None);
        };
        let len = shape.iter().product();
        if name.ends_with("norm.weight") {
            return Ok(Some(vec![1.0; len]));
        }
        if let Some(blocks) = self.blocks(name) {
            return Ok(Some(blocks.values()));
        }
        Ok(Some(self.values(name, len)))
    }

    fn read_quantized(&self, name: &str) -> Result<Option<Unpacked>> {
        Ok(self.blocks(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_weights_are_seeded() {
        for preset in PRESETS {
            preset.config().validate().expect(preset.name);
        }
        let config = Preset::find("smollm2-135m").unwrap().config();
        let a = SyntheticStore::new("smollm2-135m", &config, 1);
        let b = SyntheticStore::new("smollm2-135m", &config, 2);
        let name = "model.layers.0.self_attn.q_proj.weight";
        let (x, y) = (
            a.read(name).unwrap().unwrap(),
            b.read(name).unwrap().unwrap(),
        );
        assert_eq!(x.len(), 576 * 576);
        assert_ne!(x, y, "different seeds give different weights");
        assert_eq!(x, a.read(name).unwrap().unwrap(), "same seed, same weights");
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        let std = (x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / x.len() as f32).sqrt();
        assert!(
            mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3,
            "mean {mean}, std {std}"
        );
        assert!(Preset::find("gpt-5").is_err());
    }

    /// `quant=`: the values read are those of the blocks `read_quantized` hands out, each
    /// within its block's rounding of the f32 weights; the norms stay f32.
    #[test]
    fn quantized_presets_read_their_blocks() {
        let name = "model.layers.0.mlp.down_proj.weight";
        let plain = SyntheticStore::new("p", &Preset::parse("smollm2-135m").unwrap().config(), 3);
        let want = plain.read(name).unwrap().unwrap();
        for (spec, bits, steps) in [("q8_0", 8, 0.5f32), ("q4_0", 4, 1.0)] {
            let preset = Preset::parse(&format!("smollm2-135m,layers=1,quant={spec}")).unwrap();
            let store = SyntheticStore::new("p", &preset.config(), 3).quantized(preset.quant);
            let got = store.read(name).unwrap().unwrap();
            let blocks = store.read_quantized(name).unwrap().unwrap();
            assert_eq!((blocks.bits, blocks.group), (bits, 32), "{spec}");
            assert_eq!(blocks.values(), got, "{spec}");
            assert_ne!(got, want, "{spec}: rounded");
            for ((x, y), d) in want.chunks(32).zip(got.chunks(32)).zip(&blocks.scale) {
                for (a, b) in x.iter().zip(y) {
                    // Half a step (Q4_0: a whole one at the clamped top), plus the scale's
                    // f16 rounding over at most 128 steps.
                    let bound = d.abs() * (steps + 128.0 / 1024.0);
                    assert!((a - b).abs() <= bound, "{spec}: {a} vs {b}, step {d}");
                }
            }
            let norm = store.read("model.layers.0.input_layernorm.weight").unwrap();
            assert!(norm.unwrap().iter().all(|&v| v == 1.0));
            assert!(store.read_quantized("model.norm.weight").unwrap().is_none());
        }
        assert!(Preset::parse("smollm2-135m,quant=q5_9").is_err());
    }
}
