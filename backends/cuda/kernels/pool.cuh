/* Pooling and mean kernels of the cuda-int8 engine on int8 planes (NCHW: planes = N * C).
 *
 * Contract (qcompile.ops.reference), bit for bit:
 *   qmax_pool2d  y = max of the window's in-bounds x; padding never wins. The caller
 *                rejects geometries where a window holds no input element (the reference
 *                then converts -inf to int8, which has no defined value).
 *   qavg_pool2d  acc = sum over the window's in-bounds x of (x - x_zp): padded positions,
 *                and positions past the input that ceil_mode adds, contribute 0 (the
 *                reference's count_include_pad=True with divisor_override=1). The divisor
 *                is folded into M, so y = clamp(rrs(acc * M, n) + out_zp, qmin, qmax):
 *                the average is rounded by the shift, ties up.
 *   qmean        acc = sum of (x - x_zp) over each row of `inner` contiguous elements (the
 *                reduced dims are the trailing ones, e.g. H, W of NCHW), then the same
 *                requantize.
 * acc is computed as sum(x) - count * x_zp modulo 2^64, equal to the reference's int64.
 *
 * qc_qmax_pool2d / qc_qavg_pool2d: one thread per output element, grid-stride loop over
 * planes * out_h * out_w; block QC_POOL_THREADS, any grid. qc_qmean: one block per row
 * (grid-stride over rows), a shared-memory tree sum; block exactly QC_MEAN_THREADS.
 * Output sizes (ceil_mode included) are the caller's, as torch computes them.
 */
#pragma once

#include "elementwise.cuh"

#define QC_POOL_THREADS 256
#define QC_MEAN_THREADS 256

namespace qc_pool {

/* A window along one axis: positions start + i * step for i < count, of which those in
 * [0, size) hold input. */
struct Axis {
  int32_t start, step, count, size;
};

__device__ __forceinline__ int8_t window_max(const int8_t* plane, Axis rows, Axis cols) {
  int32_t best = -128;  // the window holds >= 1 input element, each >= -128
  for (int32_t i = 0; i < rows.count; ++i) {
    int32_t r = rows.start + i * rows.step;
    if (r < 0 || r >= rows.size) continue;
    for (int32_t j = 0; j < cols.count; ++j) {
      int32_t c = cols.start + j * cols.step;
      if (c < 0 || c >= cols.size) continue;
      int32_t v = plane[(int64_t)r * cols.size + c];
      best = v > best ? v : best;
    }
  }
  return (int8_t)best;
}

/* sum of (x - x_zp) over the in-bounds part of a unit-step window, modulo 2^64. */
__device__ __forceinline__ uint64_t window_sum(const int8_t* plane, Axis rows, Axis cols,
                                               int32_t x_zp) {
  int32_t r0 = rows.start < 0 ? 0 : rows.start, c0 = cols.start < 0 ? 0 : cols.start;
  int32_t r1 = rows.start + rows.count, c1 = cols.start + cols.count;
  r1 = r1 < rows.size ? r1 : rows.size;
  c1 = c1 < cols.size ? c1 : cols.size;
  int64_t sum = 0;
  for (int32_t r = r0; r < r1; ++r)
    for (int32_t c = c0; c < c1; ++c) sum += plane[(int64_t)r * cols.size + c];
  int64_t count = r1 > r0 && c1 > c0 ? (int64_t)(r1 - r0) * (c1 - c0) : 0;
  return (uint64_t)sum - (uint64_t)count * (uint64_t)(int64_t)x_zp;
}

/* clamp(rrs(acc * M, n) + out_zp, qmin, qmax) on acc modulo 2^64. */
__device__ __forceinline__ int8_t requantize_sum(uint64_t acc, int32_t mult, int32_t shift,
                                                 int32_t out_zp, int32_t qmin, int32_t qmax) {
  return qc_ew::shift_round_clamp(acc * (uint64_t)(int64_t)mult, shift, out_zp, qmin, qmax);
}

/* Splits flat output index o into (plane, row, column). */
__device__ __forceinline__ int64_t split_output(int64_t o, int32_t out_h, int32_t out_w,
                                                int32_t* oh, int32_t* ow) {
  *ow = (int32_t)(o % out_w);
  int64_t t = o / out_w;
  *oh = (int32_t)(t % out_h);
  return t / out_h;
}

}  // namespace qc_pool

extern "C" __global__ void __launch_bounds__(QC_POOL_THREADS) qc_qmax_pool2d(
    const int8_t* x, int8_t* y, int32_t planes, int32_t in_h, int32_t in_w, int32_t out_h,
    int32_t out_w, int32_t kernel_h, int32_t kernel_w, int32_t stride_h, int32_t stride_w,
    int32_t pad_h, int32_t pad_w, int32_t dilation_h, int32_t dilation_w) {
  const int64_t total = (int64_t)planes * out_h * out_w;
  for (int64_t o = qc_ew::first_index(); o < total; o += qc_ew::grid_stride()) {
    int32_t oh, ow;
    int64_t p = qc_pool::split_output(o, out_h, out_w, &oh, &ow);
    qc_pool::Axis rows{oh * stride_h - pad_h, dilation_h, kernel_h, in_h};
    qc_pool::Axis cols{ow * stride_w - pad_w, dilation_w, kernel_w, in_w};
    y[o] = qc_pool::window_max(x + p * in_h * in_w, rows, cols);
  }
}

extern "C" __global__ void __launch_bounds__(QC_POOL_THREADS) qc_qavg_pool2d(
    const int8_t* x, int8_t* y, int32_t planes, int32_t in_h, int32_t in_w, int32_t out_h,
    int32_t out_w, int32_t kernel_h, int32_t kernel_w, int32_t stride_h, int32_t stride_w,
    int32_t pad_h, int32_t pad_w, int32_t x_zp, int32_t mult, int32_t shift, int32_t out_zp,
    int32_t qmin, int32_t qmax) {
  const int64_t total = (int64_t)planes * out_h * out_w;
  for (int64_t o = qc_ew::first_index(); o < total; o += qc_ew::grid_stride()) {
    int32_t oh, ow;
    int64_t p = qc_pool::split_output(o, out_h, out_w, &oh, &ow);
    qc_pool::Axis rows{oh * stride_h - pad_h, 1, kernel_h, in_h};
    qc_pool::Axis cols{ow * stride_w - pad_w, 1, kernel_w, in_w};
    uint64_t acc = qc_pool::window_sum(x + p * in_h * in_w, rows, cols, x_zp);
    y[o] = qc_pool::requantize_sum(acc, mult, shift, out_zp, qmin, qmax);
  }
}

extern "C" __global__ void __launch_bounds__(QC_MEAN_THREADS) qc_qmean(
    const int8_t* x, int8_t* y, int64_t rows, int64_t inner, int32_t x_zp, int32_t mult,
    int32_t shift, int32_t out_zp, int32_t qmin, int32_t qmax) {
  QC_SHARED(int64_t, partial, QC_MEAN_THREADS);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int8_t* row = x + r * inner;
    int64_t sum = 0;
    for (int64_t i = threadIdx.x; i < inner; i += QC_MEAN_THREADS) sum += row[i];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = QC_MEAN_THREADS / 2; half > 0; half /= 2) {
      if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) {  // no barrier after: only thread 0 writes partial[0] next
      uint64_t acc = (uint64_t)partial[0] - (uint64_t)inner * (uint64_t)(int64_t)x_zp;
      y[r] = qc_pool::requantize_sum(acc, mult, shift, out_zp, qmin, qmax);
    }
  }
}

#ifdef QC_EMULATE

/* Host entry points of the emulation build; grids capped at max_blocks (see elementwise). */
inline dim3 qc_pool_grid(int64_t work, int64_t per_block, int max_blocks) {
  int64_t blocks = (work + per_block - 1) / per_block;
  blocks = blocks < max_blocks ? blocks : max_blocks;
  return dim3((unsigned)(blocks < 1 ? 1 : blocks));
}

extern "C" int qc_qmax_pool2d_launch(const int8_t* x, int8_t* y, const int32_t* geometry,
                                     int max_blocks) {
  const int32_t* g = geometry;  // planes, in_h, in_w, out_h, out_w, kernel, stride, pad, dil.
  int64_t total = (int64_t)g[0] * g[3] * g[4];
  if (total == 0) return 0;
  return qc_launch(qc_qmax_pool2d, qc_pool_grid(total, QC_POOL_THREADS, max_blocks),
                   dim3(QC_POOL_THREADS), x, y, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7],
                   g[8], g[9], g[10], g[11], g[12]);
}

extern "C" int qc_qavg_pool2d_launch(const int8_t* x, int8_t* y, const int32_t* geometry,
                                     const int32_t* requant, int max_blocks) {
  const int32_t *g = geometry, *q = requant;  // q: x_zp, mult, shift, out_zp, qmin, qmax
  int64_t total = (int64_t)g[0] * g[3] * g[4];
  if (total == 0) return 0;
  return qc_launch(qc_qavg_pool2d, qc_pool_grid(total, QC_POOL_THREADS, max_blocks),
                   dim3(QC_POOL_THREADS), x, y, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7],
                   g[8], g[9], g[10], q[0], q[1], q[2], q[3], q[4], q[5]);
}

extern "C" int qc_qmean_launch(const int8_t* x, int8_t* y, int64_t rows, int64_t inner,
                               const int32_t* requant, int max_blocks) {
  const int32_t* q = requant;
  if (rows == 0) return 0;
  return qc_launch(qc_qmean, qc_pool_grid(rows, 1, max_blocks), dim3(QC_MEAN_THREADS), x, y,
                   rows, inner, q[0], q[1], q[2], q[3], q[4], q[5]);
}

#endif
