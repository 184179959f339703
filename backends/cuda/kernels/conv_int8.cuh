/* int8 conv2d of the cuda-int8 engine on NHWC activations, with the GEMM's fused epilogue.
 *
 * Contract (qcompile.ops.reference.qconv2d), bit for bit: acc[o] = sum over the window of
 * (x - x_zp) * w[o] + bias[o] in int32, where taps outside the input hold x_zp (so they add
 * 0), then y = clamp(((int64(acc) * mult[o] + 2^(shift[o]-1)) >> shift[o]) + out_zp, qmin,
 * qmax).
 *
 * Layouts (the host converts): x [N, H, W, C] with C = groups * Cg, y [N, OH, OW, O].
 *
 * qc_conv2d_int8_implicit: the convolution as one GEMM per group, rows m = (n, oh, ow)
 * (M = N * OH * OW), columns the group's Og = O / groups output channels, and
 * k = (kh, kw, c) with K = KH * KW * Cg. Weights are packed [O, KH, KW, Cg], i.e. the GEMM's
 * w[n, k] with k contiguous. The A tile is gathered from x with cp.async: every 16-byte
 * chunk along k lies inside one tap because Cg % 16 == 0 (the host pads Cg with zero-weight
 * channels up to a multiple of 16), so a chunk is
 * either 16 contiguous channels of one input pixel or wholly padding. Padding chunks are
 * written with x_zp bytes by plain shared stores: the MMA multiplies raw int8 values and
 * the epilogue subtracts x_zp * sum_k w[n, k] over all K (as in gemm_int8.cuh), so a
 * padded tap must contribute x_zp * w to the raw product to cancel to 0. Chunks past K (B
 * is zero there) and rows past M (never stored) get the same fill. Launch: grid
 * (ceil(M / 64), ceil(Og / 64), groups), block 128 threads, static shared memory only.
 *
 * qc_depthwise_conv2d_int8: groups == C == O, weights packed [KH, KW, C]. One thread per
 * (output pixel, VEC consecutive channels), grid-stride; VEC = 4 (32-bit loads and stores)
 * when C % 4 == 0, else 1. acc accumulates (x - x_zp) * w over in-bounds taps in int32 on
 * CUDA cores. Launch: block QC_DW_THREADS, any grid.
 *
 * Both kernels take the same arguments: x, w, bias (may be null), mult, shift, y, then
 * N, H, W, C, OH, OW, O, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
 * x_zp, out_zp, qmin, qmax (int32). x and w must be 16-byte aligned.
 */
#pragma once

#include "gemm_int8.cuh"

#define QC_CONV_BM 64
#define QC_CONV_BN 64
#define QC_CONV_THREADS 128
#define QC_DW_THREADS 256

namespace qc_conv {

struct Geometry {
  int32_t n, h, w, c, oh, ow, o, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
};

/* Rows past M get this input row: it stays negative for every tap, so the tap is padding. */
constexpr int32_t kNoRow = -(1 << 30);

/* One A row this thread gathers: its image's group slice of x, and the input position of
 * tap (0, 0) of its output pixel. */
struct ARow {
  const int8_t* base;
  int32_t ih0, iw0;
};

/* How a BM x BK A tile splits into 16-byte chunks: thread t copies chunk t % kChunks of
 * rows t / kChunks + p * kRowsPerPass, p < kPasses; the same rows for every k-tile. */
template <class T, int BM, int BK>
struct AGather {
  static constexpr int kChunks = BK / 16;
  static constexpr int kRowsPerPass = T::kThreads / kChunks;
  static constexpr int kPasses = BM / kRowsPerPass;
  static_assert(T::kThreads % kChunks == 0 && BM % kRowsPerPass == 0, "A chunks split evenly");
  __device__ static int row(int p) { return (int)threadIdx.x / kChunks + p * kRowsPerPass; }
};

/* This thread's A rows of the tile starting at output pixel m0. */
template <class A>
__device__ __forceinline__ void a_rows(ARow (&rows)[A::kPasses], const int8_t* x,
                                       const Geometry& g, int m0, int group) {
  const int32_t M = g.n * g.oh * g.ow, cg = g.c / g.groups;
  QC_UNROLL
  for (int p = 0; p < A::kPasses; ++p) {
    int m = m0 + A::row(p);
    int img = m / (g.oh * g.ow), pix = m % (g.oh * g.ow);
    bool valid = m < M;
    rows[p].base = x + (valid ? (int64_t)img * g.h * g.w * g.c : 0) + group * cg;
    rows[p].ih0 = valid ? (pix / g.ow) * g.stride_h - g.pad_h : kNoRow;
    rows[p].iw0 = valid ? (pix % g.ow) * g.stride_w - g.pad_w : kNoRow;
  }
}

/* Fills one 16-byte shared chunk with the byte pattern `fill` (four copies of x_zp). */
__device__ __forceinline__ void fill_chunk(int8_t* dst, uint32_t fill) {
  uint32_t* d = reinterpret_cast<uint32_t*>(dst);
  d[0] = fill, d[1] = fill, d[2] = fill, d[3] = fill;
}

/* Issues this thread's part of A tile [m0, m0 + BM) x [k0, k0 + BK) into dst: each chunk
 * is a cp.async of 16 channels of one input pixel, or x_zp bytes for padding. */
template <class T, class A>
__device__ __forceinline__ void load_a_tile(int8_t* dst, const ARow (&rows)[A::kPasses],
                                            const Geometry& g, int k0, int K, uint32_t fill) {
  const int chunk = (int)threadIdx.x % A::kChunks, k = k0 + chunk * 16;
  const int32_t cg = g.c / g.groups, tap = k / cg, c = k - tap * cg;
  const int32_t dy = (tap / g.kw) * g.dil_h, dx = (tap % g.kw) * g.dil_w;
  QC_UNROLL
  for (int p = 0; p < A::kPasses; ++p) {
    int8_t* to = dst + A::row(p) * T::kStride + chunk * 16;
    int32_t ih = rows[p].ih0 + dy, iw = rows[p].iw0 + dx;
    if (k < K && ih >= 0 && ih < g.h && iw >= 0 && iw < g.w)
      cp_async_16(to, rows[p].base + ((int64_t)ih * g.w + iw) * g.c + c);
    else
      fill_chunk(to, fill);
  }
}

/* Requantizes this warp's accumulators and stores them to y[m, group * Og + col]. */
template <class T, int WARPS_N>
__device__ __forceinline__ void store_tile(int32_t (*acc)[T::kMmaN][4], const int32_t* sum_parts,
                                           const int32_t* bias, const int32_t* mult,
                                           const int32_t* shift, int8_t* y, const Geometry& g,
                                           int m0, int n0, int group, int x_zp, int out_zp,
                                           int qmin, int qmax) {
  const int32_t M = g.n * g.oh * g.ow, og = g.o / g.groups;
  for_each_accumulator<T, WARPS_N>(acc, [&](int tile_row, int tile_col, int32_t value) {
    const int row = m0 + tile_row;
    if (row >= M || n0 + tile_col >= og) return;
    int32_t colsum = 0;
    QC_UNROLL
    for (int p = 0; p < T::kSumParts; ++p) colsum += sum_parts[tile_col * T::kSumParts + p];
    const int ch = group * og + n0 + tile_col;
    y[(int64_t)row * g.o + ch] = requantize(value, bias ? bias[ch] : 0, x_zp, colsum, mult[ch],
                                            shift[ch], out_zp, qmin, qmax);
  });
}

/* The implicit-GEMM main loop: gemm_int8_tile's double-buffered cp.async pipeline, with A
 * gathered from x and B the group's slice of the packed weights. */
template <int BM, int BN, int BK, int WARPS_M, int WARPS_N>
__device__ __forceinline__ void implicit_tile(const int8_t* x, const int8_t* w,
                                              const int32_t* bias, const int32_t* mult,
                                              const int32_t* shift, int8_t* y, const Geometry& g,
                                              int x_zp, int out_zp, int qmin, int qmax) {
  typedef GemmTile<BM, BN, BK, WARPS_M, WARPS_N> T;
  typedef AGather<T, BM, BK> A;
  QC_SHARED(int8_t, stages, 2 * T::kStage);
  QC_SHARED(int32_t, sum_parts, T::kThreads);
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, group = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int32_t og = g.o / g.groups, K = g.kh * g.kw * (g.c / g.groups);
  const int8_t* wg = w + (int64_t)group * og * K;
  const uint32_t fill = (uint32_t)(uint8_t)x_zp * 0x01010101u;
  ARow rows[A::kPasses];
  a_rows<A>(rows, x, g, m0, group);
  int32_t acc[T::kMmaM][T::kMmaN][4] = {};
  int32_t colsum_part = 0;
  const int k_tiles = (K + BK - 1) / BK;
  load_a_tile<T, A>(stages, rows, g, 0, K, fill);
  load_tile<T, BK>(stages + BM * T::kStride, wg, BN, n0, og, 0, K);
  cp_async_commit();
  for (int kt = 0; kt < k_tiles; ++kt) {
    int8_t* next = stages + ((kt + 1) & 1) * T::kStage;
    if (kt + 1 < k_tiles) {
      load_a_tile<T, A>(next, rows, g, (kt + 1) * BK, K, fill);
      load_tile<T, BK>(next + BM * T::kStride, wg, BN, n0, og, (kt + 1) * BK, K);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int8_t* stage = stages + (kt & 1) * T::kStage;
    colsum_part += stage_column_sum<T, BK>(stage + BM * T::kStride);
    warp_stage_mma<T, BK>(acc, stage, stage + BM * T::kStride, warp / WARPS_N, warp % WARPS_N);
    __syncthreads();
  }
  sum_parts[threadIdx.x] = colsum_part;
  __syncthreads();
  store_tile<T, WARPS_N>(acc, sum_parts, bias, mult, shift, y, g, m0, n0, group, x_zp, out_zp,
                         qmin, qmax);
}

/* VEC consecutive int8 values as int32 (one 32-bit load when VEC == 4; p is then aligned). */
template <int VEC>
__device__ __forceinline__ void load_vec(int32_t (&v)[VEC], const int8_t* p) {
  if constexpr (VEC == 4) {
    uint32_t word = *reinterpret_cast<const uint32_t*>(p);
    QC_UNROLL
    for (int i = 0; i < 4; ++i) v[i] = (int8_t)(uint8_t)(word >> (8 * i));
  } else {
    QC_UNROLL
    for (int i = 0; i < VEC; ++i) v[i] = p[i];
  }
}

template <int VEC>
__device__ __forceinline__ void store_vec(int8_t* p, const int8_t (&v)[VEC]) {
  if constexpr (VEC == 4) {
    uint32_t word = 0;
    QC_UNROLL
    for (int i = 0; i < 4; ++i) word |= (uint32_t)(uint8_t)v[i] << (8 * i);
    *reinterpret_cast<uint32_t*>(p) = word;
  } else {
    QC_UNROLL
    for (int i = 0; i < VEC; ++i) p[i] = v[i];
  }
}

/* acc[v] += (x - x_zp) * w over the in-bounds taps of one window (modulo 2^32); x_img
 * points at channel c of pixel (0, 0) of the image, w_c at channel c of tap (0, 0). */
template <int VEC>
__device__ __forceinline__ void depthwise_window(uint32_t (&acc)[VEC], const int8_t* x_img,
                                                 const int8_t* w_c, const Geometry& g,
                                                 int32_t ih0, int32_t iw0, int32_t x_zp) {
  for (int32_t r = 0; r < g.kh; ++r) {
    int32_t ih = ih0 + r * g.dil_h;
    if (ih < 0 || ih >= g.h) continue;
    for (int32_t s = 0; s < g.kw; ++s) {
      int32_t iw = iw0 + s * g.dil_w;
      if (iw < 0 || iw >= g.w) continue;
      int32_t xv[VEC], wv[VEC];
      load_vec<VEC>(xv, x_img + ((int64_t)ih * g.w + iw) * g.c);
      load_vec<VEC>(wv, w_c + (int64_t)(r * g.kw + s) * g.c);
      QC_UNROLL
      for (int v = 0; v < VEC; ++v) acc[v] += (uint32_t)((xv[v] - x_zp) * wv[v]);
    }
  }
}

/* Grid-stride over (output pixel, channel vector); channel vectors vary fastest, so a warp
 * reads and writes consecutive bytes of a pixel row. */
template <int VEC>
__device__ __forceinline__ void depthwise_grid(const int8_t* x, const int8_t* w,
                                               const int32_t* bias, const int32_t* mult,
                                               const int32_t* shift, int8_t* y, const Geometry& g,
                                               int x_zp, int out_zp, int qmin, int qmax) {
  const int32_t vectors = g.c / VEC;
  const int64_t total = (int64_t)g.n * g.oh * g.ow * vectors;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
    const int32_t c = (int32_t)(i % vectors) * VEC;
    const int64_t pix = i / vectors;
    const int32_t ow = (int32_t)(pix % g.ow), oh = (int32_t)(pix / g.ow % g.oh);
    const int64_t img = pix / ((int64_t)g.ow * g.oh);
    uint32_t acc[VEC] = {};
    depthwise_window<VEC>(acc, x + img * g.h * g.w * g.c + c, w + c, g,
                          oh * g.stride_h - g.pad_h, ow * g.stride_w - g.pad_w, x_zp);
    int8_t out[VEC];
    QC_UNROLL
    for (int v = 0; v < VEC; ++v)
      out[v] = requantize((int32_t)acc[v], bias ? bias[c + v] : 0, 0, 0, mult[c + v],
                          shift[c + v], out_zp, qmin, qmax);
    store_vec<VEC>(y + pix * g.c + c, out);
  }
}

}  // namespace qc_conv

extern "C" __global__ void __launch_bounds__(QC_CONV_THREADS) qc_conv2d_int8_implicit(
    const int8_t* x, const int8_t* w, const int32_t* bias, const int32_t* mult,
    const int32_t* shift, int8_t* y, int32_t n, int32_t in_h, int32_t in_w, int32_t c,
    int32_t out_h, int32_t out_w, int32_t o, int32_t kh, int32_t kw, int32_t stride_h,
    int32_t stride_w, int32_t pad_h, int32_t pad_w, int32_t dil_h, int32_t dil_w, int32_t groups,
    int32_t x_zp, int32_t out_zp, int32_t qmin, int32_t qmax) {
  const qc_conv::Geometry g{n,  in_h, in_w,     c,        out_h, out_w, o,     kh,
                            kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups};
  qc_conv::implicit_tile<QC_CONV_BM, QC_CONV_BN, 64, 2, 2>(x, w, bias, mult, shift, y, g, x_zp,
                                                           out_zp, qmin, qmax);
}

extern "C" __global__ void __launch_bounds__(QC_DW_THREADS) qc_depthwise_conv2d_int8(
    const int8_t* x, const int8_t* w, const int32_t* bias, const int32_t* mult,
    const int32_t* shift, int8_t* y, int32_t n, int32_t in_h, int32_t in_w, int32_t c,
    int32_t out_h, int32_t out_w, int32_t o, int32_t kh, int32_t kw, int32_t stride_h,
    int32_t stride_w, int32_t pad_h, int32_t pad_w, int32_t dil_h, int32_t dil_w, int32_t groups,
    int32_t x_zp, int32_t out_zp, int32_t qmin, int32_t qmax) {
  const qc_conv::Geometry g{n,  in_h, in_w,     c,        out_h, out_w, o,     kh,
                            kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups};
  if ((c & 3) == 0)
    qc_conv::depthwise_grid<4>(x, w, bias, mult, shift, y, g, x_zp, out_zp, qmin, qmax);
  else
    qc_conv::depthwise_grid<1>(x, w, bias, mult, shift, y, g, x_zp, out_zp, qmin, qmax);
}

#ifdef QC_EMULATE

/* Host entry points of the emulation build. p holds the kernels' 20 int32 arguments in
 * order (N, H, W, C, OH, OW, O, KH, KW, strides, pads, dilations, groups, x_zp, out_zp,
 * qmin, qmax). */
#define QC_CONV_ARGS(p)                                                                       \
  p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13],    \
      p[14], p[15], p[16], p[17], p[18], p[19]

extern "C" int qc_conv2d_int8_implicit_launch(const int8_t* x, const int8_t* w,
                                              const int32_t* bias, const int32_t* mult,
                                              const int32_t* shift, int8_t* y, const int32_t* p) {
  int64_t m = (int64_t)p[0] * p[4] * p[5], og = p[6] / p[15];
  if (m == 0 || og == 0) return 0;
  dim3 grid((unsigned)((m + QC_CONV_BM - 1) / QC_CONV_BM),
            (unsigned)((og + QC_CONV_BN - 1) / QC_CONV_BN), (unsigned)p[15]);
  return qc_launch(qc_conv2d_int8_implicit, grid, dim3(QC_CONV_THREADS), x, w, bias, mult,
                   shift, y, QC_CONV_ARGS(p));
}

/* The depthwise grid is capped at max_blocks; the kernel's grid-stride loop covers the rest. */
extern "C" int qc_depthwise_conv2d_int8_launch(const int8_t* x, const int8_t* w,
                                               const int32_t* bias, const int32_t* mult,
                                               const int32_t* shift, int8_t* y, const int32_t* p,
                                               int max_blocks) {
  int64_t work = (int64_t)p[0] * p[4] * p[5] * (p[3] % 4 == 0 ? p[3] / 4 : p[3]);
  if (work == 0) return 0;
  int64_t blocks = (work + QC_DW_THREADS - 1) / QC_DW_THREADS;
  blocks = blocks < max_blocks ? blocks : max_blocks;
  return qc_launch(qc_depthwise_conv2d_int8, dim3((unsigned)(blocks < 1 ? 1 : blocks)),
                   dim3(QC_DW_THREADS), x, w, bias, mult, shift, y, QC_CONV_ARGS(p));
}

#endif
