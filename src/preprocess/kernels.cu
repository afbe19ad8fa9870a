// Preprocessing kernels: OpenCV's 8-bit resize, reproduced to the bit, then
// the per-channel normalisation table. One source, two compilers:
//  - NVRTC at start-up (src/preprocess/cuda.rs), one thread per output pixel;
//  - the host C++ compiler at build time (build.rs, the `cc` crate), one
//    loop over the pixels, for `preprocess.backend = "kernels"` and for the
//    tests that hold these functions against OpenCV on boxes without a GPU.
// Everything between the two `#if` blocks at the end is shared.
//
// How OpenCV 4.x resizes an 8-bit image (imgproc/src/resize.cpp,
// resizeGeneric_ and its SIMD helpers), which these functions follow:
//  - The source coordinate of output pixel d is (d + 0.5) * scale - 0.5,
//    computed in double and rounded to float; its floor is the first tap,
//    the fraction gives the weights in float, and the weights are rounded to
//    11-bit fixed point (short, sum ~2048). The host computes these tables
//    (src/preprocess/tables.rs); the functions below only read them.
//  - Horizontal pass: integer sums of pixel * weight (exact; scale 2^11).
//  - Vertical pass, as the SIMD path computes it for every full vector
//    (each row here is a multiple of the vector width: 640 * 3 and 224 * 3):
//      linear: ((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16), + 2, >> 2;
//      cubic:  in float, h0*b0 + (h1*b1 + (h2*b2 + h3*b3)) with
//              b = beta / 2^22, without fused multiply-add (SSE2 baseline),
//              rounded to nearest even.
//    Both then saturate to 0..255.
//  - Rows and columns outside the image repeat the border pixel.
//  - Linear with an exact 2x reduction both ways is OpenCV's "area fast"
//    path: (a + b + c + d + 2) >> 2.
// The float arithmetic must not be contracted into fused multiply-adds:
// NVRTC gets --fmad=false, the host compiler -ffp-contract=off.

#define SHITU_CUBIC_TAPS 4
#define SHITU_LINEAR_TAPS 2

#if defined(__CUDACC__)
#define SHITU_FN __device__ __forceinline__
#else
#define SHITU_FN static inline
#endif

typedef unsigned char u8;

SHITU_FN int shitu_clamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

SHITU_FN u8 shitu_sat_u8(int v) { return (u8)(v < 0 ? 0 : (v > 255 ? 255 : v)); }

// Round to nearest, ties to even, as SSE's cvtps2dq in its default mode.
SHITU_FN int shitu_round_even(float v) {
#if defined(__CUDACC__)
    return __float2int_rn(v);
#else
    return (int)__builtin_rintf(v);
#endif
}

// One channel of one pixel of a bicubic resize. `src` is interleaved RGB
// with `pitch` bytes per row; (xofs, alpha) and (yofs, beta) are the table
// entries of this output column and row: the first tap and 4 weights.
SHITU_FN u8 shitu_cubic(const u8* src, int pitch, int sw, int sh, int xofs, const short* alpha,
                        int yofs, const short* beta, int c) {
    int h[SHITU_CUBIC_TAPS];
    for (int j = 0; j < SHITU_CUBIC_TAPS; ++j) {
        const u8* row = src + (long long)shitu_clamp(yofs - 1 + j, 0, sh - 1) * pitch;
        int acc = 0;
        for (int i = 0; i < SHITU_CUBIC_TAPS; ++i)
            acc += (int)row[3 * shitu_clamp(xofs - 1 + i, 0, sw - 1) + c] * (int)alpha[i];
        h[j] = acc;
    }
    // beta * 2^-22 is exact in float; the products and sums round as SSE's do.
    const float s = 1.0f / (2048.0f * 2048.0f);
    float b0 = (float)beta[0] * s, b1 = (float)beta[1] * s;
    float b2 = (float)beta[2] * s, b3 = (float)beta[3] * s;
    float t = (float)h[3] * b3;
    t = (float)h[2] * b2 + t;
    t = (float)h[1] * b1 + t;
    t = (float)h[0] * b0 + t;
    return shitu_sat_u8(shitu_round_even(t));
}

// SSE2's mulhi on 16-bit lanes: the high half of the 32-bit product.
SHITU_FN int shitu_mulhi16(int a, int b) { return (int)(short)((a * b) >> 16); }

SHITU_FN int shitu_sat_s16(int v) { return v < -32768 ? -32768 : (v > 32767 ? 32767 : v); }

// One channel of one pixel of a bilinear resize (tables as for cubic, 2 taps).
SHITU_FN u8 shitu_linear(const u8* src, int pitch, int sw, int sh, int xofs, const short* alpha,
                         int yofs, const short* beta, int c) {
    int x0 = 3 * xofs + c, x1 = 3 * shitu_clamp(xofs + 1, 0, sw - 1) + c;
    const u8* r0 = src + (long long)shitu_clamp(yofs, 0, sh - 1) * pitch;
    const u8* r1 = src + (long long)shitu_clamp(yofs + 1, 0, sh - 1) * pitch;
    int h0 = (int)r0[x0] * alpha[0] + (int)r0[x1] * alpha[1];
    int h1 = (int)r1[x0] * alpha[0] + (int)r1[x1] * alpha[1];
    int v = shitu_sat_s16(shitu_mulhi16(shitu_sat_s16(h0 >> 4), beta[0]) +
                          shitu_mulhi16(shitu_sat_s16(h1 >> 4), beta[1]));
    return shitu_sat_u8((v + 2) >> 2);
}

// One channel of one pixel of OpenCV's exact 2x area reduction.
SHITU_FN u8 shitu_area2(const u8* src, int pitch, int x, int y, int c) {
    const u8* r0 = src + (long long)(2 * y) * pitch + 6 * x + c;
    const u8* r1 = r0 + pitch;
    return (u8)(((int)r0[0] + r0[3] + r1[0] + r1[3] + 2) >> 2);
}

// Detector input, output pixel (x, y) of a side x side image, all three
// channels, normalised through `lut` (3 x 256) and written planar at `dst`.
SHITU_FN void shitu_det_pixel(const u8* src, int pitch, int sw, int sh, const int* xofs,
                              const short* alpha, const int* yofs, const short* beta, int side,
                              const float* lut, float* dst, int x, int y) {
    long long plane = (long long)side * side, o = (long long)y * side + x;
    for (int c = 0; c < 3; ++c) {
        u8 v = shitu_cubic(src, pitch, sw, sh, xofs[x], alpha + SHITU_CUBIC_TAPS * x, yofs[y],
                           beta + SHITU_CUBIC_TAPS * y, c);
        dst[c * plane + o] = lut[c * 256 + v];
    }
}

// Recogniser input, output pixel (x, y) of crop `crop`. Per crop, `boxes`
// holds (frame, x1, y1, x2, y2, area2) and `frames` per frame (byte offset
// of its first pixel from `base`, width, height, pitch); the tables hold
// `side` entries per crop (taps: 2).
SHITU_FN void shitu_rec_pixel(const u8* base, const long long* frames, const int* boxes,
                              const int* xofs, const short* alpha, const int* yofs,
                              const short* beta, int side, const float* lut, float* dst, int crop,
                              int x, int y) {
    const int* b = boxes + 6 * crop;
    const long long* f = frames + 4 * b[0];
    int pitch = (int)f[3];
    const u8* src = base + f[0] + (long long)b[2] * pitch + 3 * b[1];
    int cw = b[3] - b[1], ch = b[4] - b[2];
    long long plane = (long long)side * side, o = (long long)y * side + x;
    long long t = (long long)crop * side;
    float* out = dst + (long long)crop * 3 * plane;
    for (int c = 0; c < 3; ++c) {
        u8 v = b[5] ? shitu_area2(src, pitch, x, y, c)
                    : shitu_linear(src, pitch, cw, ch, xofs[t + x],
                                   alpha + SHITU_LINEAR_TAPS * (t + x), yofs[t + y],
                                   beta + SHITU_LINEAR_TAPS * (t + y), c);
        out[c * plane + o] = lut[c * 256 + v];
    }
}

#if defined(__CUDACC__)

// One thread per output pixel; blockIdx.z is the frame (detector) or the crop (recogniser).
extern "C" __global__ void det_preprocess(const u8* __restrict__ base,
                                          const long long* __restrict__ frames,
                                          const int* __restrict__ xofs,
                                          const short* __restrict__ alpha,
                                          const int* __restrict__ yofs,
                                          const short* __restrict__ beta, int side,
                                          const float* __restrict__ lut, float* __restrict__ dst) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int n = blockIdx.z;
    if (x >= side || y >= side) return;
    const long long* f = frames + 4 * n;
    long long t = (long long)n * side;
    shitu_det_pixel(base + f[0], (int)f[3], (int)f[1], (int)f[2], xofs + t,
                    alpha + SHITU_CUBIC_TAPS * t, yofs + t, beta + SHITU_CUBIC_TAPS * t, side, lut,
                    dst + (long long)n * 3 * side * side, x, y);
}

extern "C" __global__ void rec_preprocess(const u8* __restrict__ base,
                                          const long long* __restrict__ frames,
                                          const int* __restrict__ boxes,
                                          const int* __restrict__ xofs,
                                          const short* __restrict__ alpha,
                                          const int* __restrict__ yofs,
                                          const short* __restrict__ beta, int side,
                                          const float* __restrict__ lut, float* __restrict__ dst) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= side || y >= side) return;
    shitu_rec_pixel(base, frames, boxes, xofs, alpha, yofs, beta, side, lut, dst, blockIdx.z, x, y);
}

#else

// The host's loops over the same per-pixel functions (same arguments as the kernels, plus the count).
extern "C" void shitu_det_preprocess_host(const u8* base, const long long* frames, int n,
                                          const int* xofs, const short* alpha, const int* yofs,
                                          const short* beta, int side, const float* lut,
                                          float* dst) {
    for (int i = 0; i < n; ++i) {
        const long long* f = frames + 4 * i;
        long long t = (long long)i * side;
        for (int y = 0; y < side; ++y)
            for (int x = 0; x < side; ++x)
                shitu_det_pixel(base + f[0], (int)f[3], (int)f[1], (int)f[2], xofs + t,
                                alpha + SHITU_CUBIC_TAPS * t, yofs + t,
                                beta + SHITU_CUBIC_TAPS * t, side, lut,
                                dst + (long long)i * 3 * side * side, x, y);
    }
}

extern "C" void shitu_rec_preprocess_host(const u8* base, const long long* frames,
                                          const int* boxes, int crops, const int* xofs,
                                          const short* alpha, const int* yofs, const short* beta,
                                          int side, const float* lut, float* dst) {
    for (int k = 0; k < crops; ++k)
        for (int y = 0; y < side; ++y)
            for (int x = 0; x < side; ++x)
                shitu_rec_pixel(base, frames, boxes, xofs, alpha, yofs, beta, side, lut, dst, k,
                                x, y);
}

#endif
