//! The shared model suite on flex, in f32.

use ember::{BackendConfig, DType};
use ember_tests::{backend_suite, Ctx};

fn ctx() -> Ctx<ember_flex::Backend> {
    let spec = BackendConfig {
        name: "flex".into(),
        device: "cpu".into(),
        dtype: DType::F32,
        ..BackendConfig::default()
    };
    let (device, runtime) = ember_flex::init(&spec).expect("flex runs in f32");
    Ctx {
        device,
        runtime,
        logits_tol: 1e-4,
    }
}

backend_suite!(ember_flex::Backend, ctx());
