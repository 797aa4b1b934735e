//! Records libtorch's directory as the run path of this crate's test binaries, so that they find
//! libtorch_cpu.so without LD_LIBRARY_PATH (the CLI does the same for its binary).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
}
