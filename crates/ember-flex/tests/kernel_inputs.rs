//! `[backend] kernel_inputs` reaches the CPU kernels: with `f32` inputs the kept SmolLM2's
//! logits are the dequantized run's (exact products, up to f32 summation order), with `q8`
//! they carry the 8-bit inputs' error (docs/performance.md, change 16).

use ember::{BackendJob, Capabilities, Engine, KernelInputs, RuntimeInfo, WeightsMode};
use ember_tests::{smollm2_config, spec};

/// The logits of a fixed text's positions under `config`, on flex as `ember_flex::run`
/// sets it up from the config's `[backend]`.
struct Logits<'a>(&'a ember::EngineConfig);

impl BackendJob for Logits<'_> {
    type Output = Vec<f32>;
    fn run<B: burn::prelude::Backend>(
        self,
        device: B::Device,
        runtime: RuntimeInfo,
        capabilities: Capabilities<B>,
    ) -> Vec<f32> {
        let engine = Engine::<B>::load(self.0, &device, runtime, &capabilities).unwrap();
        let ids = engine
            .tokenizer()
            .encode(
                "The capital of France is Paris, and the capital of Italy is",
                false,
            )
            .unwrap();
        engine.session().forward(&ids, true).unwrap()
    }
}

fn logits(weights: WeightsMode, inputs: Option<KernelInputs>) -> Vec<f32> {
    let mut config = smollm2_config();
    config.model.weights = weights;
    config.backend = spec("flex", "cpu", ember::DType::F32);
    config.backend.kernel_inputs = inputs;
    ember_flex::run(&config.backend, Logits(&config)).unwrap()
}

fn max_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn the_config_chooses_the_kernels_inputs() {
    let dense = logits(WeightsMode::Dequantize, None);
    let exact = max_error(&logits(WeightsMode::Keep, Some(KernelInputs::F32)), &dense);
    let q8 = max_error(&logits(WeightsMode::Keep, Some(KernelInputs::Q8)), &dense);
    assert!(exact < 1e-2, "f32 inputs: max logit error {exact}");
    assert!(
        q8 > 10.0 * exact.max(1e-3),
        "q8 inputs: max logit error {q8}, f32's {exact}: the key did not reach the kernels"
    );
}
