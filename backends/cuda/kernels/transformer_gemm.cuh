/* Batched int8 matmul of two activations (qmatmul) and the 16-bit residual linear (i_linear).
 *
 * Contracts, bit for bit:
 *   qmatmul   acc = sum_k (a[m,k] - a_zp) * (b[k,n] - b_zp)            (qcompile.ops.reference)
 *             y = clamp(rrs(acc * M, n) + out_zp, qmin, qmax)  int8, per-tensor M, n
 *   i_linear  acc = sum_k (x[m,k] - x_zp) * w[n,k] + bias[n]          (ops.integer_only)
 *             y = clamp(rrs(acc * M[n], n[n]), -2^15, 2^15 - 1)  int32
 * acc is the exact int64 sum (the reference's): it may pass 2^31 (K * 255 * 255 does for
 * K > 33025), so it is never held in an int32 and the requantize wraps modulo 2^64 as
 * torch's int64 does.
 *
 * Layout: the second operand is taken transposed, bt[n, k] = b[k, n] with k contiguous
 * (the engine pre-transposes; attention's K^T already is), so both operands stream rows of
 * K bytes. a is [batch, M, K], bt [batch, N, K], y [batch, M, N] row-major; a batch stride
 * of 0 broadcasts an operand over the batch (i_linear: w is one [N, K] matrix).
 *
 * Tensor-core kernels (qc_qmatmul_int8, qc_i_linear): the GemmTile<64, 64, 64, 2, 2>
 * pipeline of gemm_int8.cuh (cp.async double buffer, ldmatrix, mma.m16n8k32 on raw int8)
 * with a different epilogue. The MMA sums raw products; with rowsum_a[m] = sum_k a[m,k]
 * and colsum_b[n] = sum_k bt[n,k], summed from the stages already in shared memory,
 *   acc = dot - a_zp * colsum_b[n] - b_zp * rowsum_a[m] + K * a_zp * b_zp,
 * exact in int64 because |dot| <= K * 2^14 < 2^31 for K < 2^17 (the caller checks). Needs
 * K % 16 == 0 and 16-byte aligned a, bt. Launch: grid (ceil(N / 64), ceil(M / 64), batch),
 * block 128 threads, 21.5 KB static shared memory.
 *
 * CUDA-core kernels (qc_qmatmul_int8_simt, qc_i_linear_simt): any K; a 16 x 16 output tile
 * per block, (a - a_zp) and (bt - b_zp) staged through shared memory 16 k at a time.
 * Launch: grid (ceil(N / 16), ceil(M / 16), batch), block (16, 16).
 */
#pragma once

#include "gemm_int8.cuh"
#include "transformer_int.cuh"

#define QC_TF_MMA_TILE 64
#define QC_TF_MMA_THREADS 128
#define QC_TF_SIMT_TILE 16

namespace qc_tf {

typedef GemmTile<64, 64, 64, 2, 2> MmaTile;  // BM == BN: one row-sum split serves A and B
constexpr int kBK = 64;

/* Where one block's operands and output start: blockIdx.z picks the batch. */
struct Batch {
  const int8_t* a;
  const int8_t* bt;
  int64_t y_offset;
};

__device__ __forceinline__ Batch batch_of(const int8_t* a, const int8_t* bt, int64_t a_stride,
                                          int64_t b_stride, int M, int N) {
  const int64_t z = blockIdx.z;
  return Batch{a + z * a_stride, bt + z * b_stride, z * M * (int64_t)N};
}

/* qmatmul's epilogue: the per-tensor int8 requantize. */
struct MatmulOut {
  int8_t* y;
  int32_t N, mult, shift, out_zp, qmin, qmax;
  __device__ void operator()(int m, int n, int64_t acc) const {
    y[(int64_t)m * N + n] = requant8(acc, mult, shift, out_zp, qmin, qmax);
  }
};

/* i_linear's epilogue: bias, per-channel rrs, 16-bit clamp. */
struct WideOut {
  int32_t* y;
  const int32_t* bias;
  const int32_t* mult;
  const int32_t* shift;
  int32_t N;
  __device__ void operator()(int m, int n, int64_t acc) const {
    int64_t v = acc + (bias ? bias[n] : 0);
    y[(int64_t)m * N + n] = clamp_wide(rrs(wrap_mul(v, mult[n]), shift[n]));
  }
};

/* Raw products of one 64 x 64 tile over all of K into acc, and this thread's share of the
 * row sums of its A rows and B rows (stage_column_sum's split) into a_parts, b_parts. */
__device__ __forceinline__ void mma_mainloop(int32_t (*acc)[MmaTile::kMmaN][4], int8_t* stages,
                                             int32_t* a_parts, int32_t* b_parts, Batch in,
                                             int M, int N, int K, int m0, int n0) {
  typedef MmaTile T;
  constexpr int kB = 64 * T::kStride;  // B's offset inside a stage
  int32_t a_part = 0, b_part = 0;
  const int k_tiles = (K + kBK - 1) / kBK, warp = threadIdx.x / 32;
  load_tile<T, kBK>(stages, in.a, 64, m0, M, 0, K);
  load_tile<T, kBK>(stages + kB, in.bt, 64, n0, N, 0, K);
  cp_async_commit();
  for (int kt = 0; kt < k_tiles; ++kt) {
    int8_t* next = stages + ((kt + 1) & 1) * T::kStage;
    if (kt + 1 < k_tiles) {
      load_tile<T, kBK>(next, in.a, 64, m0, M, (kt + 1) * kBK, K);
      load_tile<T, kBK>(next + kB, in.bt, 64, n0, N, (kt + 1) * kBK, K);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int8_t* stage = stages + (kt & 1) * T::kStage;
    a_part += stage_column_sum<T, kBK>(stage);
    b_part += stage_column_sum<T, kBK>(stage + kB);
    warp_stage_mma<T, kBK>(acc, stage, stage + kB, warp / 2, warp % 2);
    __syncthreads();
  }
  a_parts[threadIdx.x] = a_part;
  b_parts[threadIdx.x] = b_part;
  __syncthreads();
}

/* Sum of the row-sum parts of tile row r. */
__device__ __forceinline__ int64_t tile_row_sum(const int32_t* parts, int r) {
  int64_t sum = 0;
  QC_UNROLL
  for (int p = 0; p < MmaTile::kSumParts; ++p) sum += parts[r * MmaTile::kSumParts + p];
  return sum;
}

/* The zero-point-corrected acc of every element of this thread's fragments, to `out`. */
template <class Out>
__device__ __forceinline__ void mma_epilogue(const int32_t (*acc)[MmaTile::kMmaN][4],
                                             const int32_t* a_parts, const int32_t* b_parts,
                                             int M, int N, int K, int a_zp, int b_zp, int m0,
                                             int n0, const Out& out) {
  const int64_t zz = (int64_t)K * a_zp * b_zp;
  for_each_accumulator<MmaTile, 2>(acc, [&](int r, int c, int32_t value) {
    if (m0 + r >= M || n0 + c >= N) return;
    int64_t v = (int64_t)value - a_zp * tile_row_sum(b_parts, c) - b_zp * tile_row_sum(a_parts, r)
                + zz;
    out(m0 + r, n0 + c, v);
  });
}

template <class Out>
__device__ __forceinline__ void mma_kernel(Batch in, int M, int N, int K, int a_zp, int b_zp,
                                           const Out& out) {
  QC_SHARED(int8_t, stages, 2 * MmaTile::kStage);
  QC_SHARED(int32_t, a_parts, MmaTile::kThreads);
  QC_SHARED(int32_t, b_parts, MmaTile::kThreads);
  const int m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
  int32_t acc[MmaTile::kMmaM][MmaTile::kMmaN][4] = {};
  mma_mainloop(acc, stages, a_parts, b_parts, in, M, N, K, m0, n0);
  mma_epilogue(acc, a_parts, b_parts, M, N, K, a_zp, b_zp, m0, n0, out);
}

/* One output per thread: sum over K of (a - a_zp) * (bt - b_zp), 16 k per shared stage.
 * Out-of-range entries are staged as 0, so they add nothing. */
template <class Out>
__device__ __forceinline__ void simt_kernel(Batch in, int M, int N, int K, int a_zp, int b_zp,
                                            const Out& out) {
  constexpr int S = QC_TF_SIMT_TILE, P = S + 1;  // padded rows: column reads are conflict-free
  QC_SHARED(int32_t, as, S * P);
  QC_SHARED(int32_t, bs, S * P);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int m = blockIdx.y * S + ty, n_load = blockIdx.x * S + ty, n = blockIdx.x * S + tx;
  int64_t acc = 0;
  for (int k0 = 0; k0 < K; k0 += S) {
    const int k = k0 + tx;
    as[ty * P + tx] = m < M && k < K ? in.a[(int64_t)m * K + k] - a_zp : 0;
    bs[ty * P + tx] = n_load < N && k < K ? in.bt[(int64_t)n_load * K + k] - b_zp : 0;
    __syncthreads();
    int32_t part = 0;  // 16 products of at most 255 * 255 each
    QC_UNROLL
    for (int kk = 0; kk < S; ++kk) part += as[ty * P + kk] * bs[tx * P + kk];
    acc += part;
    __syncthreads();
  }
  if (m < M && n < N) out(m, n, acc);
}

}  // namespace qc_tf

#define QC_TF_MATMUL_PARAMS                                                                  \
  const int8_t *a, const int8_t *bt, int8_t *y, int32_t M, int32_t N, int32_t K,             \
      int64_t a_batch_stride, int64_t b_batch_stride, int32_t a_zp, int32_t b_zp,            \
      int32_t mult, int32_t shift, int32_t out_zp, int32_t qmin, int32_t qmax
#define QC_TF_MATMUL_ARGS                                                                    \
  a, bt, y, M, N, K, a_batch_stride, b_batch_stride, a_zp, b_zp, mult, shift, out_zp, qmin, qmax
#define QC_TF_LINEAR_PARAMS                                                                  \
  const int8_t *x, const int8_t *w, const int32_t *bias, const int32_t *mult,                \
      const int32_t *shift, int32_t *y, int32_t M, int32_t N, int32_t K, int32_t x_zp
#define QC_TF_LINEAR_ARGS x, w, bias, mult, shift, y, M, N, K, x_zp

#define QC_TF_MATMUL_BODY(runner)                                                              \
  qc_tf::Batch in = qc_tf::batch_of(a, bt, a_batch_stride, b_batch_stride, M, N);              \
  qc_tf::runner(in, M, N, K, a_zp, b_zp,                                                     \
                qc_tf::MatmulOut{y + in.y_offset, N, mult, shift, out_zp, qmin, qmax})

extern "C" __global__ void __launch_bounds__(QC_TF_MMA_THREADS)
    qc_qmatmul_int8(QC_TF_MATMUL_PARAMS) {
  QC_TF_MATMUL_BODY(mma_kernel);
}

extern "C" __global__ void __launch_bounds__(QC_TF_SIMT_TILE * QC_TF_SIMT_TILE)
    qc_qmatmul_int8_simt(QC_TF_MATMUL_PARAMS) {
  QC_TF_MATMUL_BODY(simt_kernel);
}

extern "C" __global__ void __launch_bounds__(QC_TF_MMA_THREADS) qc_i_linear(QC_TF_LINEAR_PARAMS) {
  qc_tf::mma_kernel(qc_tf::Batch{x, w, 0}, M, N, K, x_zp, 0,
                    qc_tf::WideOut{y, bias, mult, shift, N});
}

extern "C" __global__ void __launch_bounds__(QC_TF_SIMT_TILE * QC_TF_SIMT_TILE)
    qc_i_linear_simt(QC_TF_LINEAR_PARAMS) {
  qc_tf::simt_kernel(qc_tf::Batch{x, w, 0}, M, N, K, x_zp, 0,
                     qc_tf::WideOut{y, bias, mult, shift, N});
}

#ifdef QC_EMULATE

/* Host entry points of the emulation build: the kernel over its whole grid; an empty
 * output launches nothing. */
inline int qc_tf_matmul_launch(void (*kernel)(QC_TF_MATMUL_PARAMS), int tile, dim3 block,
                               int32_t batch, QC_TF_MATMUL_PARAMS) {
  if (batch == 0 || M == 0 || N == 0) return 0;
  dim3 grid((N + tile - 1) / tile, (M + tile - 1) / tile, batch);
  return qc_launch(kernel, grid, block, QC_TF_MATMUL_ARGS);
}

extern "C" int qc_qmatmul_int8_launch(int32_t batch, QC_TF_MATMUL_PARAMS) {
  return qc_tf_matmul_launch(qc_qmatmul_int8, QC_TF_MMA_TILE, dim3(QC_TF_MMA_THREADS), batch,
                             QC_TF_MATMUL_ARGS);
}

extern "C" int qc_qmatmul_int8_simt_launch(int32_t batch, QC_TF_MATMUL_PARAMS) {
  return qc_tf_matmul_launch(qc_qmatmul_int8_simt, QC_TF_SIMT_TILE,
                             dim3(QC_TF_SIMT_TILE, QC_TF_SIMT_TILE), batch, QC_TF_MATMUL_ARGS);
}

extern "C" int qc_i_linear_launch(QC_TF_LINEAR_PARAMS) {
  if (M == 0 || N == 0) return 0;
  dim3 grid((N + QC_TF_MMA_TILE - 1) / QC_TF_MMA_TILE, (M + QC_TF_MMA_TILE - 1) / QC_TF_MMA_TILE);
  return qc_launch(qc_i_linear, grid, dim3(QC_TF_MMA_THREADS), QC_TF_LINEAR_ARGS);
}

extern "C" int qc_i_linear_simt_launch(QC_TF_LINEAR_PARAMS) {
  if (M == 0 || N == 0) return 0;
  dim3 grid((N + QC_TF_SIMT_TILE - 1) / QC_TF_SIMT_TILE,
            (M + QC_TF_SIMT_TILE - 1) / QC_TF_SIMT_TILE);
  return qc_launch(qc_i_linear_simt, grid, dim3(QC_TF_SIMT_TILE, QC_TF_SIMT_TILE),
                   QC_TF_LINEAR_ARGS);
}

#endif
