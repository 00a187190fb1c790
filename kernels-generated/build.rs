// Compiles the kernels of every spec in src/specs.rs for every supported
// arch with hipcc, unless the `hip` feature is off.
fn main() {
    attnforge_codegen::build::Build::new()
        .file("src/specs.rs")
        .archs(&attnforge_codegen::Arch::ALL)
        .hip(std::env::var_os("CARGO_FEATURE_HIP").is_some())
        .run();
}
