/* int8 GEMM with a fused per-channel requantize: y[M, N] = requant(x[M, K] . w[N, K]^T).
 *
 * Contract (qcompile.ops.reference.qlinear): acc = sum_k (x[m,k] - x_zp) * w[n,k] + bias[n]
 * in int32, y = clamp(((int64(acc) * mult[n] + 2^(shift[n]-1)) >> shift[n]) + out_zp,
 * qmin, qmax). The MMA multiplies raw int8 values (x - x_zp does not fit s8), and the
 * epilogue subtracts x_zp * colsum[n], where colsum[n] = sum_k w[n,k] is summed from the
 * B tiles already in shared memory. Both are exact modulo 2^32, so acc is exact whenever
 * the contract's int32 accumulator is.
 *
 * Each block computes a BM x BN tile of y with WARPS_M x WARPS_N warps. K is walked in
 * BK-byte steps through two shared-memory stages filled by cp.async (the next stage loads
 * while the current one feeds ldmatrix + mma.m16n8k32). Rows past M or N and columns past
 * K are zero-filled, so any M, N work; K must be a multiple of 16 (the caller checks) and
 * x, w 16-byte aligned. Launch: grid (ceil(N / BN), ceil(M / BM)), block WARPS_M * WARPS_N
 * * 32 threads, no dynamic shared memory. bias may be null.
 */
#pragma once

#include "ptx.cuh"

template <int BM, int BN, int BK, int WARPS_M, int WARPS_N>
struct GemmTile {
  static constexpr int kThreads = WARPS_M * WARPS_N * 32;
  static constexpr int kWarpM = BM / WARPS_M, kWarpN = BN / WARPS_N;
  static constexpr int kMmaM = kWarpM / 16, kMmaN = kWarpN / 8;
  static constexpr int kStride = BK + 16;  // padded rows: ldmatrix reads are conflict-free
  static constexpr int kStage = (BM + BN) * kStride;
  static constexpr int kSumParts = kThreads / BN;  // threads summing one row of w
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tile is whole 16x16 pieces");
  static_assert(BK % 32 == 0, "BK is whole mma k-steps");
  static_assert(kThreads % BN == 0 && BK % kSumParts == 0, "column sums split evenly");
};

/* Issues the cp.async copies of `rows` rows x BK bytes of src (row-major, row length K)
 * starting at (row0, k0) into dst, zero-filling what lies outside [rows_total) x [K). */
template <class T, int BK>
__device__ __forceinline__ void load_tile(int8_t* dst, const int8_t* src, int rows, int row0,
                                          int rows_total, int k0, int K) {
  constexpr int kChunksPerRow = BK / 16;
  for (int c = threadIdx.x; c < rows * kChunksPerRow; c += T::kThreads) {
    int r = c / kChunksPerRow, k = (c % kChunksPerRow) * 16;
    bool inside = row0 + r < rows_total && k0 + k < K;
    const int8_t* from = inside ? src + (int64_t)(row0 + r) * K + k0 + k : src;
    cp_async_16_zfill(dst + r * T::kStride + k, from, inside ? 16 : 0);
  }
}

/* This thread's share of sum_k w[n, k] over one B stage (rows n of the tile). */
template <class T, int BK>
__device__ __forceinline__ int32_t stage_column_sum(const int8_t* b_stage) {
  constexpr int kLen = BK / T::kSumParts;
  const int8_t* row = b_stage + (threadIdx.x / T::kSumParts) * T::kStride
                      + (threadIdx.x % T::kSumParts) * kLen;
  int32_t sum = 0;
  QC_UNROLL
  for (int k = 0; k < kLen; ++k) sum += row[k];
  return sum;
}

/* One warp's mma over one stage: ldmatrix fragments of its kWarpM rows of A and kWarpN
 * rows of B for each 32-byte k-step, then kMmaM x kMmaN mma.m16n8k32. */
template <class T, int BK>
__device__ __forceinline__ void warp_stage_mma(int32_t (*acc)[T::kMmaN][4], const int8_t* a_stage,
                                               const int8_t* b_stage, int warp_m, int warp_n) {
  const int lane = threadIdx.x % 32;
  QC_UNROLL
  for (int ks = 0; ks < BK; ks += 32) {
    uint32_t a[T::kMmaM][4], b[T::kMmaN][2];
    QC_UNROLL
    for (int i = 0; i < T::kMmaM; ++i) {
      int row = warp_m * T::kWarpM + i * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
      ldmatrix_x4(a[i], a_stage + row * T::kStride + ks + 16 * (lane >> 4));
    }
    QC_UNROLL
    for (int j = 0; j < T::kMmaN; j += 2) {
      int row = warp_n * T::kWarpN + j * 8 + (lane & 7) + 8 * (lane >> 4);
      uint32_t r[4];
      ldmatrix_x4(r, b_stage + row * T::kStride + ks + 16 * ((lane >> 3) & 1));
      b[j][0] = r[0], b[j][1] = r[1], b[j + 1][0] = r[2], b[j + 1][1] = r[3];
    }
    QC_UNROLL
    for (int i = 0; i < T::kMmaM; ++i)
      QC_UNROLL
      for (int j = 0; j < T::kMmaN; ++j) mma_m16n8k32_s8(acc[i][j], a[i], b[j]);
  }
}

/* The contract's requantize of int32 acc = dot + bias - x_zp * colsum (mod 2^32). */
__device__ __forceinline__ int8_t requantize(int32_t dot, int32_t bias, int32_t x_zp,
                                             int32_t colsum, int32_t mult, int32_t shift,
                                             int32_t out_zp, int32_t qmin, int32_t qmax) {
  uint32_t wrapped = (uint32_t)dot + (uint32_t)bias - (uint32_t)x_zp * (uint32_t)colsum;
  int64_t acc = (int32_t)wrapped;
  int64_t y = ((acc * mult + ((int64_t)1 << (shift - 1))) >> shift) + out_zp;
  y = y < qmin ? qmin : (y > qmax ? qmax : y);
  return (int8_t)y;
}

/* Calls f(row, col, value) for every accumulator this thread holds after warp_stage_mma,
 * row and col relative to the block tile: the C/D fragment layout of mma.m16n8k32 (lane / 4
 * picks the row, 2 * (lane % 4) the column pair; element e adds 8 rows for e >= 2 and one
 * column for odd e), warps laid out WARPS_N to a row. */
template <class T, int WARPS_N, class F>
__device__ __forceinline__ void for_each_accumulator(const int32_t (*acc)[T::kMmaN][4], F f) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  QC_UNROLL
  for (int i = 0; i < T::kMmaM; ++i)
    QC_UNROLL
    for (int j = 0; j < T::kMmaN; ++j)
      QC_UNROLL
      for (int e = 0; e < 4; ++e)
        f((warp / WARPS_N) * T::kWarpM + i * 16 + (lane >> 2) + 8 * (e >> 1),
          (warp % WARPS_N) * T::kWarpN + j * 8 + 2 * (lane & 3) + (e & 1), acc[i][j][e]);
}

template <int BM, int BN, int BK, int WARPS_M, int WARPS_N>
__device__ __forceinline__ void gemm_int8_tile(
    const int8_t* x, const int8_t* w, const int32_t* bias, const int32_t* mult,
    const int32_t* shift, int8_t* y, int M, int N, int K, int x_zp, int out_zp, int qmin,
    int qmax) {
  typedef GemmTile<BM, BN, BK, WARPS_M, WARPS_N> T;
  QC_SHARED(int8_t, stages, 2 * T::kStage);
  QC_SHARED(int32_t, sum_parts, T::kThreads);
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN, warp = threadIdx.x / 32;
  int32_t acc[T::kMmaM][T::kMmaN][4] = {};
  int32_t colsum_part = 0;
  const int k_tiles = (K + BK - 1) / BK;
  load_tile<T, BK>(stages, x, BM, m0, M, 0, K);
  load_tile<T, BK>(stages + BM * T::kStride, w, BN, n0, N, 0, K);
  cp_async_commit();
  for (int kt = 0; kt < k_tiles; ++kt) {
    int8_t* next = stages + ((kt + 1) & 1) * T::kStage;
    if (kt + 1 < k_tiles) {
      load_tile<T, BK>(next, x, BM, m0, M, (kt + 1) * BK, K);
      load_tile<T, BK>(next + BM * T::kStride, w, BN, n0, N, (kt + 1) * BK, K);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int8_t* stage = stages + (kt & 1) * T::kStage;
    colsum_part += stage_column_sum<T, BK>(stage + BM * T::kStride);
    warp_stage_mma<T, BK>(acc, stage, stage + BM * T::kStride, warp / WARPS_N,
                          warp % WARPS_N);
    __syncthreads();
  }
  sum_parts[threadIdx.x] = colsum_part;
  __syncthreads();
  for_each_accumulator<T, WARPS_N>(acc, [&](int tile_row, int tile_col, int32_t value) {
    const int row = m0 + tile_row, col = n0 + tile_col;
    if (row >= M || col >= N) return;
    int32_t colsum = 0;
    QC_UNROLL
    for (int p = 0; p < T::kSumParts; ++p) colsum += sum_parts[tile_col * T::kSumParts + p];
    y[(int64_t)row * N + col] = requantize(value, bias ? bias[col] : 0, x_zp, colsum, mult[col],
                                           shift[col], out_zp, qmin, qmax);
  });
}

extern "C" __global__ void __launch_bounds__(128) qc_gemm_int8_64x64(
    const int8_t* x, const int8_t* w, const int32_t* bias, const int32_t* mult,
    const int32_t* shift, int8_t* y, int M, int N, int K, int x_zp, int out_zp, int qmin,
    int qmax) {
  gemm_int8_tile<64, 64, 64, 2, 2>(x, w, bias, mult, shift, y, M, N, K, x_zp, out_zp, qmin,
                                   qmax);
}

extern "C" __global__ void __launch_bounds__(256) qc_gemm_int8_128x128(
    const int8_t* x, const int8_t* w, const int32_t* bias, const int32_t* mult,
    const int32_t* shift, int8_t* y, int M, int N, int K, int x_zp, int out_zp, int qmin,
    int qmax) {
  gemm_int8_tile<128, 128, 64, 2, 4>(x, w, bias, mult, shift, y, M, N, K, x_zp, out_zp, qmin,
                                     qmax);
}

#ifdef QC_EMULATE

/* Host entry points of the emulation build: run the kernel over its whole grid. */
#define QC_GEMM_HOST_LAUNCHER(kernel, BM, BN, THREADS)                                       \
  extern "C" int kernel##_launch(const int8_t* x, const int8_t* w, const int32_t* bias,    \
                                 const int32_t* mult, const int32_t* shift, int8_t* y, int M, \
                                 int N, int K, int x_zp, int out_zp, int qmin, int qmax) {   \
    dim3 grid((N + BN - 1) / BN, (M + BM - 1) / BM);                                         \
    return qc_launch(kernel, grid, dim3(THREADS), x, w, bias, mult, shift, y, M, N, K, x_zp, \
                     out_zp, qmin, qmax);                                                    \
  }

QC_GEMM_HOST_LAUNCHER(qc_gemm_int8_64x64, 64, 64, 128)
QC_GEMM_HOST_LAUNCHER(qc_gemm_int8_128x128, 128, 128, 256)

#endif
