/* Row-wise and elementwise I-BERT kernels: i_softmax, i_layernorm, i_gelu, i_add.
 *
 * Contracts (qcompile.ops.integer_only), bit for bit, each step as there:
 *   i_softmax   t = rrs((q - in_zp) * M_in, n_in); top = max of t over kept positions
 *               (-2^40 when none); e = i_exp(min(t - top, 0)) at kept positions, else 0;
 *               s = max(sum(e), 1); r = (e << 30) // s; y = requant8(r, M_out, n_out)
 *   i_layernorm d = x - in_zp; mean = round_div(sum(d) << 8, N); c = (d << 8) - mean;
 *               var = sum(c^2) // N; den = max(isqrt((var << 12) + eps), 1);
 *               norm = round_div(c << 16, den); y = requant8(norm * gamma + beta, M, n)
 *   i_gelu      d = q - in_zp; u = rrs(d * M_in, n_in); y = requant8(d * (ERF_ONE + i_erf(u)))
 *   i_add       y = clamp(rrs((a - a_zp) * Ma + (b - b_zp) * Mb, n), -2^15, 2^15 - 1)
 * Sums are int64 (modulo 2^64, as torch's): exact in any order, so the block reductions
 * (warp shuffles, then one shared-memory slot per warp) give the reference's sums.
 *
 * qc_i_softmax, qc_i_layernorm: one block of QC_TF_ROW_THREADS threads per row of n
 * contiguous elements (rows of any length; each thread strides over its row), grid-stride
 * over rows, 32 bytes of static shared memory. Each pass recomputes t or d from the input
 * instead of keeping the row, so nothing depends on n. The softmax mask (uint8, 1 = keep,
 * may be null) has mask_mod rows of n; row r reads mask row (r / mask_div) % mask_mod,
 * which covers masks broadcast over the leading dims of an attention score tensor
 * ([B, 1, 1, S]: mask_div = H * S_q, mask_mod = B; [S_q, S]: mask_div = 1, mask_mod = S_q).
 * The layernorm input is int8 (x_wide = 0) or the 16-bit int32 of i_add (x_wide = 1).
 * qc_i_gelu, qc_i_add: grid-stride elementwise, block QC_EW_THREADS, any grid; i_gelu
 * takes elementwise.cuh's vector path, i_add reads int8 or int32 per input (a_wide, b_wide).
 */
#pragma once

#include "elementwise.cuh"
#include "transformer_int.cuh"

#define QC_TF_ROW_THREADS 128

namespace qc_tf {

constexpr int kRowWarps = QC_TF_ROW_THREADS / 32;

struct SumOp {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return wrap_add(a, b); }
};

struct MaxOp {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a > b ? a : b; }
};

/* op over the 32 lanes of this warp, the result in every lane. */
template <class Op>
__device__ __forceinline__ int64_t warp_reduce(int64_t v, Op op) {
#ifdef QC_EMULATE
  const int64_t* lanes = qc_emu::warp_exchange(v);
  int64_t r = lanes[0];
  for (unsigned l = 1; l < qc_emu::kWarpSize; ++l) r = op(r, lanes[l]);
  return r;
#else
  QC_UNROLL
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
#endif
}

/* op over the block, the result in every thread. All threads must call it. */
template <class Op>
__device__ __forceinline__ int64_t block_reduce(int64_t v, int64_t* scratch, Op op) {
  v = warp_reduce(v, op);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  int64_t r = scratch[0];
  QC_UNROLL
  for (int w = 1; w < kRowWarps; ++w) r = op(r, scratch[w]);
  __syncthreads();  // every thread has read scratch: the next reduction may overwrite it
  return r;
}

struct SoftmaxArgs {
  int32_t in_zp, in_mult, in_shift, out_mult, out_shift, out_zp, qmin, qmax;
  __device__ int64_t t(int8_t q) const {  // the input in units S_T
    return rrs(wrap_mul((int64_t)q - in_zp, in_mult), in_shift);
  }
};

__device__ __forceinline__ void softmax_row(const int8_t* q, const uint8_t* keep, int8_t* y,
                                            int32_t n, const SoftmaxArgs& p, int64_t* scratch) {
  int64_t top = kSoftmaxLowest;
  for (int32_t i = threadIdx.x; i < n; i += QC_TF_ROW_THREADS)
    if (!keep || keep[i]) top = MaxOp()(top, p.t(q[i]));
  top = block_reduce(top, scratch, MaxOp());
  int64_t sum = 0;
  for (int32_t i = threadIdx.x; i < n; i += QC_TF_ROW_THREADS) {
    int64_t d = p.t(q[i]) - top;
    if (!keep || keep[i]) sum += i_exp(d < 0 ? d : 0);
  }
  sum = block_reduce(sum, scratch, SumOp());
  const int64_t total = sum < 1 ? 1 : sum;
  for (int32_t i = threadIdx.x; i < n; i += QC_TF_ROW_THREADS) {
    int64_t d = p.t(q[i]) - top;
    int64_t e = !keep || keep[i] ? i_exp(d < 0 ? d : 0) : 0;
    y[i] = requant8((e << kProbBits) / total, p.out_mult, p.out_shift, p.out_zp, p.qmin, p.qmax);
  }
}

struct NormArgs {
  const void* x;
  int32_t x_wide, in_zp;
  const int32_t* gamma;
  const int32_t* beta;
  int64_t eps;
  int32_t mult, shift, out_zp, qmin, qmax;
  __device__ int64_t d(int64_t row, int32_t n, int32_t i) const {
    int64_t at = row * n + i;
    int64_t v = x_wide ? ((const int32_t*)x)[at] : ((const int8_t*)x)[at];
    return v - in_zp;
  }
};

__device__ __forceinline__ void layernorm_row(int64_t row, int8_t* y, int32_t n,
                                              const NormArgs& p, int64_t* scratch) {
  int64_t sum = 0;
  for (int32_t i = threadIdx.x; i < n; i += QC_TF_ROW_THREADS) sum = wrap_add(sum, p.d(row, n, i));
  sum = block_reduce(sum, scratch, SumOp());
  const int64_t mean = round_div(shl(sum, kMeanBits), n);
  int64_t squares = 0;
  for (int32_t i = threadIdx.x; i < n; i += QC_TF_ROW_THREADS) {
    int64_t c = shl(p.d(row, n, i), kMeanBits) - mean;
    squares = wrap_add(squares, wrap_mul(c, c));
  }
  squares = block_reduce(squares, scratch, SumOp());
  const int64_t var = floor_div(squares, n);
  const int64_t den_raw = isqrt(wrap_add(shl(var, 2 * kVarShift), p.eps));
  const int64_t den = den_raw < 1 ? 1 : den_raw;
  for (int32_t i = threadIdx.x; i < n; i += QC_TF_ROW_THREADS) {
    int64_t c = shl(p.d(row, n, i), kMeanBits) - mean;
    int64_t norm = round_div(shl(c, kVarShift + kNormBits), den);
    int64_t acc = wrap_add(wrap_mul(norm, p.gamma[i]), p.beta[i]);
    y[row * n + i] = requant8(acc, p.mult, p.shift, p.out_zp, p.qmin, p.qmax);
  }
}

struct Gelu {
  int32_t in_zp, in_mult, in_shift, out_mult, out_shift, out_zp, qmin, qmax;
  __device__ int8_t operator()(int8_t q) const {
    int64_t d = (int64_t)q - in_zp;
    int64_t u = rrs(wrap_mul(d, in_mult), in_shift);
    int64_t acc = wrap_mul(d, kErfOne + i_erf(u));
    return requant8(acc, out_mult, out_shift, out_zp, qmin, qmax);
  }
};

__device__ __forceinline__ int64_t load_value(const void* p, int32_t wide, int64_t i) {
  return wide ? ((const int32_t*)p)[i] : ((const int8_t*)p)[i];
}

}  // namespace qc_tf

extern "C" __global__ void __launch_bounds__(QC_TF_ROW_THREADS) qc_i_softmax(
    const int8_t* q, const uint8_t* mask, int8_t* y, int64_t rows, int32_t n, int64_t mask_div,
    int64_t mask_mod, int32_t in_zp, int32_t in_mult, int32_t in_shift, int32_t out_mult,
    int32_t out_shift, int32_t out_zp, int32_t qmin, int32_t qmax) {
  QC_SHARED(int64_t, scratch, qc_tf::kRowWarps);
  const qc_tf::SoftmaxArgs p{in_zp, in_mult, in_shift, out_mult, out_shift, out_zp, qmin, qmax};
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const uint8_t* keep = mask ? mask + (r / mask_div) % mask_mod * n : nullptr;
    qc_tf::softmax_row(q + r * n, keep, y + r * n, n, p, scratch);
  }
}

extern "C" __global__ void __launch_bounds__(QC_TF_ROW_THREADS) qc_i_layernorm(
    const void* x, int32_t x_wide, const int32_t* gamma, const int32_t* beta, int8_t* y,
    int64_t rows, int32_t n, int32_t in_zp, int64_t eps, int32_t mult, int32_t shift,
    int32_t out_zp, int32_t qmin, int32_t qmax) {
  QC_SHARED(int64_t, scratch, qc_tf::kRowWarps);
  const qc_tf::NormArgs p{x, x_wide, in_zp, gamma, beta, eps, mult, shift, out_zp, qmin, qmax};
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) qc_tf::layernorm_row(r, y, n, p, scratch);
}

extern "C" __global__ void __launch_bounds__(QC_EW_THREADS) qc_i_gelu(
    const int8_t* x, int8_t* y, int64_t n, int32_t in_zp, int32_t in_mult, int32_t in_shift,
    int32_t out_mult, int32_t out_shift, int32_t out_zp, int32_t qmin, int32_t qmax) {
  qc_ew::map_unary(x, y, n,
                   qc_tf::Gelu{in_zp, in_mult, in_shift, out_mult, out_shift, out_zp, qmin, qmax});
}

extern "C" __global__ void __launch_bounds__(QC_EW_THREADS) qc_i_add(
    const void* a, int32_t a_wide, const void* b, int32_t b_wide, int32_t* y, int64_t n,
    int32_t a_zp, int32_t a_mult, int32_t b_zp, int32_t b_mult, int32_t shift) {
  using namespace qc_tf;
  for (int64_t i = qc_ew::first_index(); i < n; i += qc_ew::grid_stride()) {
    int64_t acc = wrap_add(wrap_mul(load_value(a, a_wide, i) - a_zp, a_mult),
                           wrap_mul(load_value(b, b_wide, i) - b_zp, b_mult));
    y[i] = clamp_wide(rrs(acc, shift));
  }
}

#ifdef QC_EMULATE

/* Host entry points of the emulation build; grids capped at max_blocks (rows for the
 * row kernels, as elementwise.cuh's qc_ew_grid for the others). */
inline dim3 qc_tf_row_grid(int64_t rows, int max_blocks) {
  return dim3((unsigned)(rows < max_blocks ? rows : max_blocks));
}

extern "C" int qc_i_softmax_launch(const int8_t* q, const uint8_t* mask, int8_t* y, int64_t rows,
                                   int32_t n, int64_t mask_div, int64_t mask_mod,
                                   const int32_t* args, int max_blocks) {
  if (rows == 0 || n == 0) return 0;
  return qc_launch(qc_i_softmax, qc_tf_row_grid(rows, max_blocks), dim3(QC_TF_ROW_THREADS), q,
                   mask, y, rows, n, mask_div, mask_mod, args[0], args[1], args[2], args[3],
                   args[4], args[5], args[6], args[7]);
}

extern "C" int qc_i_layernorm_launch(const void* x, int32_t x_wide, const int32_t* gamma,
                                     const int32_t* beta, int8_t* y, int64_t rows, int32_t n,
                                     int64_t eps, const int32_t* args, int max_blocks) {
  if (rows == 0 || n == 0) return 0;
  return qc_launch(qc_i_layernorm, qc_tf_row_grid(rows, max_blocks), dim3(QC_TF_ROW_THREADS), x,
                   x_wide, gamma, beta, y, rows, n, args[0], eps, args[1], args[2], args[3],
                   args[4], args[5]);
}

extern "C" int qc_i_gelu_launch(const int8_t* x, int8_t* y, int64_t n, const int32_t* args,
                                int max_blocks) {
  return QC_EW_LAUNCH(qc_i_gelu, n, x, y, n, args[0], args[1], args[2], args[3], args[4],
                      args[5], args[6], args[7]);
}

extern "C" int qc_i_add_launch(const void* a, int32_t a_wide, const void* b, int32_t b_wide,
                               int32_t* y, int64_t n, const int32_t* args, int max_blocks) {
  return QC_EW_LAUNCH(qc_i_add, n, a, a_wide, b, b_wide, y, n, args[0], args[1], args[2],
                      args[3], args[4]);
}

#endif
