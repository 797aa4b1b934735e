//! Records libtorch's directory as the run path of this crate's test binaries, so that they find
//! libtorch_cpu.so without LD_LIBRARY_PATH (the CLI does the same for its binary). With the
//! `cuda-graphs` feature, also compiles src/cuda_graphs.cpp against libtorch's headers and
//! CUDA's (`CUDA_ROOT`, else `CUDA_HOME`, else /usr/local/cuda) and links libtorch's CUDA parts.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let libtorch = std::env::var("LIBTORCH").ok();
    if let Some(dir) = &libtorch {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
    #[cfg(feature = "cuda-graphs")]
    cuda_graphs(libtorch);
}

#[cfg(feature = "cuda-graphs")]
fn cuda_graphs(libtorch: Option<String>) {
    println!("cargo:rerun-if-changed=src/cuda_graphs.cpp");
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let Some(libtorch) = libtorch else {
        panic!("the cuda-graphs feature needs LIBTORCH (a CUDA libtorch) to build");
    };
    let cuda = std::env::var("CUDA_ROOT")
        .or_else(|_| std::env::var("CUDA_HOME"))
        .unwrap_or_else(|_| "/usr/local/cuda".into());
    cc::Build::new()
        .cpp(true)
        .file("src/cuda_graphs.cpp")
        .include(format!("{libtorch}/include"))
        .include(format!("{libtorch}/include/torch/csrc/api/include"))
        .include(format!("{cuda}/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("ember_cuda_graphs");
    println!("cargo:rustc-link-search=native={libtorch}/lib");
    println!("cargo:rustc-link-search=native={cuda}/lib");
    println!("cargo:rustc-link-search=native={cuda}/lib64");
    for lib in ["torch_cuda", "c10_cuda", "torch_cpu", "c10", "cudart"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}
