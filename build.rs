//! Compiles the kernels that have a host half (src/preprocess/kernels.cu,
//! src/embed/l2norm.cu) for the host: the same source NVRTC compiles for
//! the GPU, built as C++ so that the CPU path runs it on any box and CI
//! tests it without a GPU.

fn main() {
    let srcs = ["src/preprocess/kernels.cu", "src/embed/l2norm.cu"];
    for src in srcs {
        println!("cargo:rerun-if-changed={src}");
    }
    cc::Build::new()
        .cpp(true)
        // A .cu file is CUDA to the driver; this is the host half of it.
        .flag("-x")
        .flag("c++")
        .flag("-std=c++17")
        // The kernels round float sums as OpenCV's SSE code does: a fused
        // multiply-add (aarch64 compilers contract by default) would not.
        .flag("-ffp-contract=off")
        .opt_level(2)
        .warnings(true)
        .files(srcs)
        .compile("shitu_kernels");
}
