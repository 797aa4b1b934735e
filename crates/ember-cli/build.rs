//! Records the git commit for bench results. With the `tch` backend compiled in, records
//! libtorch's directory as the run path of the binary and tests, so that they find
//! libtorch_cpu.so without LD_LIBRARY_PATH (which, when set, still wins: it is a RUNPATH).
fn main() {
    // The commit bench results name (`build_commit`).
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=8", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EMBER_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TCH").is_some() {
        if let Ok(dir) = std::env::var("LIBTORCH") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
        }
        // Building here for another machine (scripts/build-gpu.sh): a CUDA libtorch unpacked
        // from the PyPI wheel without its nvidia-* packages links only if the libraries those
        // name (cuDNN, cuBLAS, NCCL, ...) may stay unresolved until run time, where the target
        // machine's torch installation provides them.
        println!("cargo:rerun-if-env-changed=EMBER_LINK_ALLOW_SHLIB_UNDEFINED");
        if std::env::var_os("EMBER_LINK_ALLOW_SHLIB_UNDEFINED").is_some() {
            println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
        }
    }
}
