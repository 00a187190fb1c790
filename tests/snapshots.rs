//! Snapshots of the generated HIP of every bundled spec's kernels, at a
//! wave64 (gfx90a) and a wave32 (gfx1030) target, named
//! `<kernel>__<spec>@<arch>`. CI runs with INSTA_UPDATE=no: a change to the
//! generated code must come with its reviewed snapshot.

use attnforge::codegen::kernels::generate;
use attnforge::Arch;

#[test]
fn generated_hip_of_every_bundled_kernel() {
    for b in attnforge::kernels::ALL {
        for arch in [Arch::Gfx90a, Arch::Gfx1030] {
            let kernel = generate(&b.kernel, arch.target())
                .unwrap_or_else(|e| panic!("{} for {arch}: {e}", b.name));
            let name = format!("{}__{}@{}", b.kernel.kind(), b.name, arch);
            insta::assert_snapshot!(name, kernel.to_string());
        }
    }
}
