// L2 normalisation of feature rows, PaddleClas's `feature_normalize`: each
// row divided by its length, a zero row left as it is. One source, two
// compilers, as src/preprocess/kernels.cu:
//  - NVRTC at start-up (src/embed/cuda.rs): one thread per row, in place on
//    the recogniser's output, which stays on the device for the search;
//  - the host C++ compiler (build.rs): `shitu_edge::embed::l2_normalize`,
//    the CPU path.
// The sum is taken in double in row order, without fused multiply-adds
// (NVRTC --fmad=false, host -ffp-contract=off), so both give the same bits.

#if defined(__CUDACC__)
#define SHITU_FN __device__ __forceinline__
#else
#define SHITU_FN static inline
#include <math.h>
#endif

SHITU_FN void shitu_l2_row(float* row, int dim) {
    double sum = 0.0;
    for (int i = 0; i < dim; ++i) {
        double v = (double)row[i];
        sum += v * v;
    }
    float norm = (float)sqrt(sum);
    if (norm > 0.0f)
        for (int i = 0; i < dim; ++i) row[i] = row[i] / norm;
}

#if defined(__CUDACC__)

extern "C" __global__ void l2_normalize_rows(float* __restrict__ x, int rows, int dim) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < rows) shitu_l2_row(x + (long long)r * dim, dim);
}

#else

extern "C" void shitu_l2_normalize_host(float* x, int rows, int dim) {
    for (int r = 0; r < rows; ++r) shitu_l2_row(x + (long long)r * dim, dim);
}

#endif
