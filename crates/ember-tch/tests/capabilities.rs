//! libtorch's capabilities reach the model as values, not through a global: `ember_tch::run`
//! hands its job the fused ops; an engine loaded with them runs them in its forward pass
//! (counted through a wrapper that passes every call on), an engine loaded with
//! `Capabilities::none()` in the same process runs none of them, and both give the same
//! greedy tokens and logits (within 1e-4), for each decoder family (Llama and Gemma 3 tiny
//! models, f32 on the CPU).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::prelude::*;
use ember::nn::{Fused, FusedOps};
use ember::{BackendJob, Capabilities, DType, Engine, EngineConfig, RuntimeInfo};
use ember_tests::{fixtures, greedy, max_abs_diff, spec};

type Tch = ember_tch::Backend;

/// libtorch's fused ops, counting the calls they ran (returned `Some` for).
struct Counting {
    inner: Fused<Tch>,
    ran: AtomicUsize,
}

impl Counting {
    fn count<T>(&self, out: Option<T>) -> Option<T> {
        if out.is_some() {
            self.ran.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    fn ran(&self) -> usize {
        self.ran.load(Ordering::Relaxed)
    }
}

impl FusedOps<Tch> for Counting {
    fn rms_norm(
        &self,
        x: &Tensor<Tch, 3>,
        weight: &Tensor<Tch, 1>,
        eps: f64,
    ) -> Option<Tensor<Tch, 3>> {
        self.count(self.inner.ops().rms_norm(x, weight, eps))
    }

    fn attention(
        &self,
        q: &Tensor<Tch, 4>,
        k: &Tensor<Tch, 4>,
        v: &Tensor<Tch, 4>,
        bias: Option<&Tensor<Tch, 4>>,
    ) -> Option<Tensor<Tch, 4>> {
        self.count(self.inner.ops().attention(q, k, v, bias))
    }

    fn linear_add(
        &self,
        residual: &Tensor<Tch, 3>,
        x: &Tensor<Tch, 3>,
        w: &Tensor<Tch, 2>,
    ) -> Option<Tensor<Tch, 3>> {
        self.count(self.inner.ops().linear_add(residual, x, w))
    }
}

/// What a job is handed: whether it got fused ops and graphs.
struct Offered;

impl BackendJob for Offered {
    type Output = (bool, bool);

    fn run<B: Backend>(
        self,
        _device: B::Device,
        _runtime: RuntimeInfo,
        capabilities: Capabilities<B>,
    ) -> (bool, bool) {
        (capabilities.fused.is_some(), capabilities.graphs.is_some())
    }
}

#[test]
fn run_hands_the_job_libtorchs_fused_ops() {
    let offered = ember_tch::run(&spec("tch", "cpu", DType::F32), Offered).unwrap();
    assert_eq!(offered, (true, false), "(fused ops, graphs) on the CPU");
}

#[test]
fn an_engine_runs_the_fused_ops_it_is_handed_and_none_without() {
    let (device, runtime) = ember_tch::init(&spec("tch", "cpu", DType::F32)).unwrap();
    let tch = ember_tch::capabilities(&device);
    let counting = Arc::new(Counting {
        inner: tch
            .fused
            .clone()
            .expect("ember-tch offers fused ops on the CPU"),
        ran: AtomicUsize::new(0),
    });
    let handed = Capabilities {
        fused: Some(Fused(counting.clone())),
        ..tch
    };
    for variant in ["gqa-untied", "gemma3"] {
        let mut config = EngineConfig::default();
        config.model.source = fixtures()
            .join("tiny")
            .join(variant)
            .join("hf")
            .display()
            .to_string();
        let fused = Engine::<Tch>::load(&config, &device, runtime.clone(), &handed).unwrap();
        let plain =
            Engine::<Tch>::load(&config, &device, runtime.clone(), &Capabilities::none()).unwrap();
        let prompt = fused
            .tokenizer()
            .encode("The quick brown fox", true)
            .unwrap();

        let before = counting.ran();
        let with_fused = greedy(&fused, &prompt, 12);
        let ran = counting.ran() - before;
        assert!(ran > 0, "{variant}: the engine handed fused ops ran none");

        let without = greedy(&plain, &prompt, 12);
        let want = plain.session().forward(&prompt, true).unwrap();
        assert_eq!(
            counting.ran() - before,
            ran,
            "{variant}: the engine loaded without capabilities ran fused ops"
        );
        assert_eq!(with_fused, without, "{variant}: greedy tokens differ");
        let got = fused.session().forward(&prompt, true).unwrap();
        let err = max_abs_diff(&got, &want);
        assert!(
            err <= 1e-4,
            "{variant}: fused vs portable logits max error {err}"
        );
        eprintln!("{variant}: {ran} fused ops ran over 12 greedy tokens; tokens {with_fused:?}");
    }
}
