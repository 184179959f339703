/* Elementwise kernels of the cuda-int8 engine: requantize, qadd, qclamp, quantize, dequantize.
 *
 * Contract (qcompile.ops.reference), bit for bit:
 *   requantize  y = clamp(rrs((q - in_zp) * M, n) + out_zp, qmin, qmax)
 *   qadd        y = clamp(rrs((a - a_zp) * Ma + (b - b_zp) * Mb, n) + out_zp, qmin, qmax)
 *   qclamp      y = clamp(x, qmin, qmax)
 *   quantize    y = clamp(rint(x / s) + zp, qmin, qmax) in float32, NaN -> clamp(zp)
 *   dequantize  y = float32(q - zp) * s
 * where rrs(v, n) = (v + 2^(n-1)) >> n (arithmetic shift, ties up). The reference computes
 * in torch int64, whose + and * wrap modulo 2^64; the kernels do the same ring arithmetic in
 * uint64 and shift its two's-complement value, so even extreme int32 zero points agree.
 * Float division is IEEE round-to-nearest (NVRTC's default -prec-div=true; no fast math),
 * rintf rounds half to even like torch.round, and nothing contracts into an FMA.
 *
 * Each kernel is a grid-stride loop over n elements. Where every pointer has the same
 * offset modulo 4 elements, a scalar head brings them to a 4-element boundary, the middle
 * moves 4 elements per load/store (32-bit for int8, 128-bit for float32) and a scalar tail
 * finishes; otherwise every element goes the scalar way. Launch: block QC_EW_THREADS
 * threads (the kernels assume nothing else about it), any grid of at least one block.
 */
#pragma once

#include "emulate.h"

#ifdef QC_EMULATE
#include <cmath>
#endif

#define QC_EW_THREADS 256

/* Scalar head and tail loops: at most 3 elements each beside the vector path, and the only
 * path for mismatched pointers, whose speed does not matter; unrolled copies only add code. */
#ifdef QC_EMULATE
#define QC_NO_UNROLL
#else
#define QC_NO_UNROLL _Pragma("unroll 1")
#endif

namespace qc_ew {

/* Four consecutive elements, aligned so that one load or store moves all of them. */
template <class T>
struct __align__(4 * sizeof(T)) Vec4 {
  T v[4];
};

/* The element offset of p modulo 4 (pointers are element-aligned). */
template <class T>
__device__ __forceinline__ unsigned phase(const T* p) {
  return (unsigned)(((uint64_t)p / sizeof(T)) & 3u);
}

/* First index of the vector part: the scalar head's length, or n when the pointers'
 * phases differ and no index aligns them all. */
__device__ __forceinline__ int64_t vector_start(unsigned phase0, bool same_phase, int64_t n) {
  int64_t head = (4 - phase0) & 3;
  return same_phase && head < n ? head : n;
}

__device__ __forceinline__ int64_t first_index() {
  return (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_stride() { return (int64_t)gridDim.x * blockDim.x; }

__device__ __forceinline__ int32_t clamp_int(int64_t v, int32_t lo, int32_t hi) {
  return (int32_t)(v < lo ? lo : (v > hi ? hi : v));
}

/* clamp(rrs(v, shift) + out_zp, qmin, qmax) with v the two's-complement int64 of a
 * value computed modulo 2^64; shift in [1, 62]. */
__device__ __forceinline__ int8_t shift_round_clamp(uint64_t v, int32_t shift, int32_t out_zp,
                                                    int32_t qmin, int32_t qmax) {
  int64_t y = (int64_t)(v + (1ull << (shift - 1))) >> shift;
  return (int8_t)clamp_int((int64_t)((uint64_t)y + (uint64_t)(int64_t)out_zp), qmin, qmax);
}

/* (q - zp) * m modulo 2^64. */
__device__ __forceinline__ uint64_t scaled(int8_t q, int32_t zp, int32_t m) {
  return (uint64_t)((int64_t)q - zp) * (uint64_t)(int64_t)m;
}

struct Requantize {
  int32_t in_zp, mult, shift, out_zp, qmin, qmax;
  __device__ int8_t operator()(int8_t q) const {
    return shift_round_clamp(scaled(q, in_zp, mult), shift, out_zp, qmin, qmax);
  }
};

struct Add {
  int32_t a_zp, a_mult, b_zp, b_mult, shift, out_zp, qmin, qmax;
  __device__ int8_t operator()(int8_t a, int8_t b) const {
    uint64_t acc = scaled(a, a_zp, a_mult) + scaled(b, b_zp, b_mult);
    return shift_round_clamp(acc, shift, out_zp, qmin, qmax);
  }
};

struct Clamp {
  int32_t qmin, qmax;
  __device__ int8_t operator()(int8_t x) const { return (int8_t)clamp_int(x, qmin, qmax); }
};

struct Quantize {
  float scale;
  int32_t zp, qmin, qmax;
  __device__ int8_t operator()(float x) const {
    float v = x / scale;
    if (v != v) return (int8_t)clamp_int(zp, qmin, qmax);
    float r = rintf(v) + (float)zp;  // the reference's float32 add, rounding included
    r = r < (float)qmin ? (float)qmin : (r > (float)qmax ? (float)qmax : r);
    return (int8_t)(int32_t)r;
  }
};

struct Dequantize {
  float scale;
  int32_t zp;
  __device__ float operator()(int8_t q) const {
    return (float)(int32_t)((uint32_t)(int32_t)q - (uint32_t)zp) * scale;  // int32 wraps
  }
};

/* y[i] = op(x[i]) for i < n, 4 elements at a time where the pointers allow. */
template <class In, class Out, class Op>
__device__ __forceinline__ void map_unary(const In* x, Out* y, int64_t n, const Op& op) {
  const int64_t first = first_index(), stride = grid_stride();
  const int64_t head = vector_start(phase(x), phase(x) == phase(y), n);
  const int64_t words = (n - head) / 4, tail = head + 4 * words;
  const Vec4<In>* xv = reinterpret_cast<const Vec4<In>*>(x + head);
  Vec4<Out>* yv = reinterpret_cast<Vec4<Out>*>(y + head);
  for (int64_t i = first; i < words; i += stride) {
    Vec4<In> a = xv[i];
    Vec4<Out> r;
    QC_UNROLL
    for (int e = 0; e < 4; ++e) r.v[e] = op(a.v[e]);
    yv[i] = r;
  }
  QC_NO_UNROLL
  for (int64_t i = first; i < head; i += stride) y[i] = op(x[i]);
  QC_NO_UNROLL
  for (int64_t i = tail + first; i < n; i += stride) y[i] = op(x[i]);
}

/* y[i] = op(a[i], b[i]) for i < n, 4 elements at a time where the pointers allow. */
template <class Op>
__device__ __forceinline__ void map_binary(const int8_t* a, const int8_t* b, int8_t* y,
                                           int64_t n, const Op& op) {
  const int64_t first = first_index(), stride = grid_stride();
  const bool same = phase(a) == phase(y) && phase(b) == phase(y);
  const int64_t head = vector_start(phase(y), same, n);
  const int64_t words = (n - head) / 4, tail = head + 4 * words;
  const Vec4<int8_t>* av = reinterpret_cast<const Vec4<int8_t>*>(a + head);
  const Vec4<int8_t>* bv = reinterpret_cast<const Vec4<int8_t>*>(b + head);
  Vec4<int8_t>* yv = reinterpret_cast<Vec4<int8_t>*>(y + head);
  for (int64_t i = first; i < words; i += stride) {
    Vec4<int8_t> p = av[i], q = bv[i], r;
    QC_UNROLL
    for (int e = 0; e < 4; ++e) r.v[e] = op(p.v[e], q.v[e]);
    yv[i] = r;
  }
  QC_NO_UNROLL
  for (int64_t i = first; i < head; i += stride) y[i] = op(a[i], b[i]);
  QC_NO_UNROLL
  for (int64_t i = tail + first; i < n; i += stride) y[i] = op(a[i], b[i]);
}

}  // namespace qc_ew

extern "C" __global__ void __launch_bounds__(QC_EW_THREADS) qc_requantize(
    const int8_t* x, int8_t* y, int64_t n, int32_t in_zp, int32_t mult, int32_t shift,
    int32_t out_zp, int32_t qmin, int32_t qmax) {
  qc_ew::map_unary(x, y, n, qc_ew::Requantize{in_zp, mult, shift, out_zp, qmin, qmax});
}

extern "C" __global__ void __launch_bounds__(QC_EW_THREADS) qc_qadd(
    const int8_t* a, const int8_t* b, int8_t* y, int64_t n, int32_t a_zp, int32_t a_mult,
    int32_t b_zp, int32_t b_mult, int32_t shift, int32_t out_zp, int32_t qmin, int32_t qmax) {
  qc_ew::map_binary(a, b, y, n,
                    qc_ew::Add{a_zp, a_mult, b_zp, b_mult, shift, out_zp, qmin, qmax});
}

extern "C" __global__ void __launch_bounds__(QC_EW_THREADS) qc_qclamp(
    const int8_t* x, int8_t* y, int64_t n, int32_t qmin, int32_t qmax) {
  qc_ew::map_unary(x, y, n, qc_ew::Clamp{qmin, qmax});
}

extern "C" __global__ void __launch_bounds__(QC_EW_THREADS) qc_quantize(
    const float* x, int8_t* y, int64_t n, float scale, int32_t zp, int32_t qmin, int32_t qmax) {
  qc_ew::map_unary(x, y, n, qc_ew::Quantize{scale, zp, qmin, qmax});
}

extern "C" __global__ void __launch_bounds__(QC_EW_THREADS) qc_dequantize(
    const int8_t* x, float* y, int64_t n, float scale, int32_t zp) {
  qc_ew::map_unary(x, y, n, qc_ew::Dequantize{scale, zp});
}

#ifdef QC_EMULATE

/* Host entry points of the emulation build. The grid is what a GPU launch of n elements
 * gets (one thread per 4 elements), capped at max_blocks so that tests can make every
 * thread walk several grid strides; n == 0 launches nothing. */
inline dim3 qc_ew_grid(int64_t n, int max_blocks) {
  int64_t blocks = ((n + 3) / 4 + QC_EW_THREADS - 1) / QC_EW_THREADS;
  blocks = blocks < max_blocks ? blocks : max_blocks;
  return dim3((unsigned)(blocks < 1 ? 1 : blocks));
}

#define QC_EW_LAUNCH(kernel, n, ...) \
  ((n) == 0 ? 0 : qc_launch(kernel, qc_ew_grid(n, max_blocks), dim3(QC_EW_THREADS), __VA_ARGS__))

extern "C" int qc_requantize_launch(const int8_t* x, int8_t* y, int64_t n, int32_t in_zp,
                                    int32_t mult, int32_t shift, int32_t out_zp, int32_t qmin,
                                    int32_t qmax, int max_blocks) {
  return QC_EW_LAUNCH(qc_requantize, n, x, y, n, in_zp, mult, shift, out_zp, qmin, qmax);
}

extern "C" int qc_qadd_launch(const int8_t* a, const int8_t* b, int8_t* y, int64_t n,
                              int32_t a_zp, int32_t a_mult, int32_t b_zp, int32_t b_mult,
                              int32_t shift, int32_t out_zp, int32_t qmin, int32_t qmax,
                              int max_blocks) {
  return QC_EW_LAUNCH(qc_qadd, n, a, b, y, n, a_zp, a_mult, b_zp, b_mult, shift, out_zp, qmin,
                      qmax);
}

extern "C" int qc_qclamp_launch(const int8_t* x, int8_t* y, int64_t n, int32_t qmin,
                                int32_t qmax, int max_blocks) {
  return QC_EW_LAUNCH(qc_qclamp, n, x, y, n, qmin, qmax);
}

extern "C" int qc_quantize_launch(const float* x, int8_t* y, int64_t n, float scale, int32_t zp,
                                  int32_t qmin, int32_t qmax, int max_blocks) {
  return QC_EW_LAUNCH(qc_quantize, n, x, y, n, scale, zp, qmin, qmax);
}

extern "C" int qc_dequantize_launch(const int8_t* x, float* y, int64_t n, float scale,
                                    int32_t zp, int max_blocks) {
  return QC_EW_LAUNCH(qc_dequantize, n, x, y, n, scale, zp);
}

#endif
