//! Compiles the GPU kernels (`kernels/*.cu`) for the host as C, so that the
//! tests check their arithmetic against the CPU engine on every machine
//! (`src/engine/gpu/host.rs`). On the device the same sources are compiled
//! at run time by NVRTC; building nof1d needs no CUDA toolkit.

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    let mut build = cc::Build::new();
    build
        .file("kernels/filter.cu")
        .file("kernels/scan.cu")
        .include("kernels")
        // The .cu files are C++ for NVRTC and kept to C's subset for this.
        .flag("-xc")
        .flag_if_supported("-std=c11")
        // The CPU engine never fuses multiply-adds: neither may the kernels.
        .flag_if_supported("-ffp-contract=off")
        .flag_if_supported("-fno-fast-math")
        .opt_level(2)
        .warnings(true);
    build.compile("nof1d_kernels_host");
}
