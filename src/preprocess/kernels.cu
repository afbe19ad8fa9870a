// Preprocessing on the GPU, one thread per output pixel (all three channels).
// Compiled at run time by NVRTC (src/preprocess/cuda.rs), and on the CPU by
// tests/it/preprocess_kernels.rs through a small shim, so that the arithmetic
// is checked against OpenCV on boxes without a GPU too.
//
// Both kernels follow OpenCV's resize: the source coordinate of output pixel
// d is (d + 0.5) * scale - 0.5; the result is rounded to 8 bits (OpenCV's
// saturate_cast) and then mapped through the same per-channel lookup table
// as the CPU path (preprocess/normalize.rs), so a pixel that rounds to the
// same level gives the same float. OpenCV computes 8-bit resizes in fixed
// point; these kernels use float, so a level can differ by one.

extern "C" {

__device__ __forceinline__ float cubic_weight(float x) {
    // OpenCV's cubic: a = -0.75.
    const float a = -0.75f;
    x = fabsf(x);
    if (x <= 1.0f) return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
    if (x < 2.0f) return ((a * x - 5.0f * a) * x + 8.0f * a) * x - 4.0f * a;
    return 0.0f;
}

__device__ __forceinline__ int clampi(int v, int lo, int hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

// OpenCV's source coordinate of output pixel d when n pixels become side:
// (d + 0.5) * n / side - 0.5, split into its floor and the fraction.
__device__ __forceinline__ int src_coord(int d, int n, int side, float* frac) {
    float scale = (float)((double)n / side);
    float f = ((float)d + 0.5f) * scale - 0.5f;
    int i = (int)floorf(f);
    *frac = f - (float)i;
    return i;
}

__device__ __forceinline__ unsigned char to_level(float v) {
    // saturate_cast<uchar>: round half to even is what cvRound does; ties are
    // vanishingly rare after a weighted sum, so rintf (current mode: nearest even).
    float r = rintf(v);
    return (unsigned char)(r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r));
}

// Detector input: an interleaved RGB frame (src, width sw, height sh, row
// pitch in bytes) resized to side x side with INTER_CUBIC, normalised through
// lut (3 x 256 floats), written planar (3 x side x side) at dst.
__global__ void det_preprocess(const unsigned char* __restrict__ src, int sw, int sh, int pitch,
                               float* __restrict__ dst, int side, const float* __restrict__ lut) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= side || y >= side) return;
    float fx, fy;
    int ix = src_coord(x, sw, side, &fx);
    int iy = src_coord(y, sh, side, &fy);
    float wx[4], wy[4];
    for (int k = 0; k < 4; ++k) {
        wx[k] = cubic_weight(fx - (float)(k - 1));
        wy[k] = cubic_weight(fy - (float)(k - 1));
    }
    float acc[3] = {0.0f, 0.0f, 0.0f};
    for (int j = 0; j < 4; ++j) {
        int sy = clampi(iy + j - 1, 0, sh - 1);
        const unsigned char* row = src + (size_t)sy * pitch;
        float rowacc[3] = {0.0f, 0.0f, 0.0f};
        for (int i = 0; i < 4; ++i) {
            int sx = clampi(ix + i - 1, 0, sw - 1);
            const unsigned char* p = row + 3 * sx;
            rowacc[0] += wx[i] * p[0];
            rowacc[1] += wx[i] * p[1];
            rowacc[2] += wx[i] * p[2];
        }
        acc[0] += wy[j] * rowacc[0];
        acc[1] += wy[j] * rowacc[1];
        acc[2] += wy[j] * rowacc[2];
    }
    size_t plane = (size_t)side * side;
    size_t o = (size_t)y * side + x;
    for (int c = 0; c < 3; ++c) dst[c * plane + o] = lut[c * 256 + to_level(acc[c])];
}

// Recogniser input: for every box of a batch, one launch. boxes holds
// (frame, x1, y1, x2, y2) per crop, frames the device address offsets and
// geometry of each frame: (offset, width, height, pitch). Each crop is
// resized to side x side with INTER_LINEAR, normalised through lut, and
// written planar at dst + crop * 3 * side * side. blockIdx.z is the crop.
__global__ void rec_preprocess(const unsigned char* __restrict__ base, const long long* __restrict__ frames,
                               const int* __restrict__ boxes, float* __restrict__ dst, int side,
                               const float* __restrict__ lut) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int crop = blockIdx.z;
    if (x >= side || y >= side) return;
    const int* b = boxes + crop * 5;
    const long long* f = frames + b[0] * 4;
    const unsigned char* src = base + f[0];
    int pitch = (int)f[3];
    int x1 = b[1], y1 = b[2];
    int cw = b[3] - b[1], ch = b[4] - b[2];
    float fx, fy;
    int ix = src_coord(x, cw, side, &fx);
    int iy = src_coord(y, ch, side, &fy);
    // OpenCV: a coordinate before the first pixel or at the last one takes that pixel whole.
    if (ix < 0) { fx = 0.0f; ix = 0; }
    if (ix >= cw - 1) { fx = 0.0f; ix = cw - 1; }
    if (iy < 0) { fy = 0.0f; iy = 0; }
    if (iy >= ch - 1) { fy = 0.0f; iy = ch - 1; }
    int ix1 = ix + 1 < cw ? ix + 1 : ix;
    int iy1 = iy + 1 < ch ? iy + 1 : iy;
    const unsigned char* r0 = src + (size_t)(y1 + iy) * pitch + 3 * (x1 + ix);
    const unsigned char* r0b = src + (size_t)(y1 + iy) * pitch + 3 * (x1 + ix1);
    const unsigned char* r1 = src + (size_t)(y1 + iy1) * pitch + 3 * (x1 + ix);
    const unsigned char* r1b = src + (size_t)(y1 + iy1) * pitch + 3 * (x1 + ix1);
    size_t plane = (size_t)side * side;
    float* out = dst + (size_t)crop * 3 * plane;
    size_t o = (size_t)y * side + x;
    for (int c = 0; c < 3; ++c) {
        float top = r0[c] * (1.0f - fx) + r0b[c] * fx;
        float bottom = r1[c] * (1.0f - fx) + r1b[c] * fx;
        out[c * plane + o] = lut[c * 256 + to_level(top * (1.0f - fy) + bottom * fy)];
    }
}

}
