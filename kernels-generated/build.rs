// Compiles the kernels of every spec in src/specs.rs for every supported
// arch: the AMD archs with hipcc (feature `hip`), the NVIDIA archs with nvcc
// (feature `cuda`). Code objects are shared through the user's attnforge
// cache, so the check, test and compile-fail builds of one checkout (and
// other checkouts) compile each kernel once.
fn main() {
    let mut build = attnforge_codegen::build::Build::new();
    build
        .file("src/specs.rs")
        .archs(&attnforge_codegen::Arch::ALL)
        .hip(std::env::var_os("CARGO_FEATURE_HIP").is_some())
        .cuda(std::env::var_os("CARGO_FEATURE_CUDA").is_some());
    if let Some(dir) = attnforge_codegen::build::user_cache_dir() {
        build.shared_cache(dir.join("objects"));
    }
    build.run();
}
