// Top-k of the gallery scores for the GPU search (src/search/cuda_flat.rs):
// cuBLAS writes every score of a batch of queries, these keep the best k.
// Compiled at run time by NVRTC with the options of src/gpu/nvrtc.rs, and
// in CI for every supported architecture (tests/it/nvrtc.rs).

// NVRTC has no <math.h>, so no INFINITY: the bit pattern of -inf.
#define NEG_INF __int_as_float(0xff800000)

#define MAX_K 32

// Sorted (descending) insertion of (v, i) into a list of k.
__device__ __forceinline__ void push(float* s, int* ix, int k, float v, int i) {
    if (!(v > s[k - 1])) return;
    int j = k - 1;
    while (j > 0 && s[j - 1] < v) { s[j] = s[j - 1]; ix[j] = ix[j - 1]; --j; }
    s[j] = v; ix[j] = i;
}

// Each thread holds a sorted list in shared memory; halve the lists until
// thread 0 holds the block's best k, then write it to out_s/out_i.
__device__ void merge_block(float* sh_s, int* sh_i, int k, float* out_s, int* out_i) {
    unsigned t = threadIdx.x;
    for (unsigned stride = 1; stride < blockDim.x; stride *= 2) {
        __syncthreads();
        if (t % (2 * stride) == 0 && t + stride < blockDim.x) {
            float* a = sh_s + t * k; int* ai = sh_i + t * k;
            float* b = sh_s + (t + stride) * k; int* bi = sh_i + (t + stride) * k;
            float ms[MAX_K]; int mi[MAX_K];
            int x = 0, y = 0;
            for (int j = 0; j < k; ++j) {
                if (y >= k || (x < k && a[x] >= b[y])) { ms[j] = a[x]; mi[j] = ai[x]; ++x; }
                else { ms[j] = b[y]; mi[j] = bi[y]; ++y; }
            }
            for (int j = 0; j < k; ++j) { a[j] = ms[j]; ai[j] = mi[j]; }
        }
    }
    __syncthreads();
    if (t == 0) for (int j = 0; j < k; ++j) { out_s[j] = sh_s[j]; out_i[j] = sh_i[j]; }
}

// Pass 1. grid (parts, queries): the best k of rows [part*chunk, +chunk) of
// each query's score row.
extern "C" __global__ void topk_rows(const float* scores, int rows, int chunk, int k,
                                     float* part_s, int* part_i) {
    extern __shared__ unsigned char smem[];
    float* sh_s = (float*)smem;
    int* sh_i = (int*)(sh_s + blockDim.x * k);
    int q = blockIdx.y, part = blockIdx.x, parts = gridDim.x;
    const float* s = scores + (size_t)q * rows;
    float bs[MAX_K]; int bi[MAX_K];
    for (int j = 0; j < k; ++j) { bs[j] = NEG_INF; bi[j] = -1; }
    int end = min(rows, (part + 1) * chunk);
    for (int r = part * chunk + threadIdx.x; r < end; r += blockDim.x) push(bs, bi, k, s[r], r);
    for (int j = 0; j < k; ++j) { sh_s[threadIdx.x * k + j] = bs[j]; sh_i[threadIdx.x * k + j] = bi[j]; }
    size_t o = ((size_t)q * parts + part) * k;
    merge_block(sh_s, sh_i, k, part_s + o, part_i + o);
}

// Pass 2. grid (queries): the best k of the parts' candidates.
extern "C" __global__ void topk_merge(const float* part_s, const int* part_i, int n, int k,
                                      float* out_s, int* out_i) {
    extern __shared__ unsigned char smem[];
    float* sh_s = (float*)smem;
    int* sh_i = (int*)(sh_s + blockDim.x * k);
    int q = blockIdx.x;
    const float* s = part_s + (size_t)q * n;
    const int* ix = part_i + (size_t)q * n;
    float bs[MAX_K]; int bi[MAX_K];
    for (int j = 0; j < k; ++j) { bs[j] = NEG_INF; bi[j] = -1; }
    for (int r = threadIdx.x; r < n; r += blockDim.x) if (ix[r] >= 0) push(bs, bi, k, s[r], ix[r]);
    for (int j = 0; j < k; ++j) { sh_s[threadIdx.x * k + j] = bs[j]; sh_i[threadIdx.x * k + j] = bi[j]; }
    merge_block(sh_s, sh_i, k, out_s + (size_t)q * k, out_i + (size_t)q * k);
}

// Queries already on the device (the recogniser's output) for an fp16
// gallery: round each float to half, to nearest even, as the host's
// fp16::from_f32 does. PTX's cvt needs no header.
extern "C" __global__ void f32_to_f16(const float* __restrict__ in, unsigned short* __restrict__ out,
                                      int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(in[i]));
    out[i] = h;
}
