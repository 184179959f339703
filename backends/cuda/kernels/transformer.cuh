/* The transformer kernels of the cuda-int8 engine: the integer-only (I-BERT) ops and the
 * activation x activation matmul, bit for bit as qcompile.ops.reference.qmatmul and
 * qcompile.ops.integer_only compute them.
 *
 *   transformer_int.cuh   the integer steps (rrs, floor/round division, i_exp, i_erf, isqrt)
 *   transformer_gemm.cuh  qc_qmatmul_int8, qc_i_linear (tensor cores, K % 16 == 0) and their
 *                         CUDA-core forms qc_qmatmul_int8_simt, qc_i_linear_simt (any K)
 *   transformer_rows.cuh  qc_i_softmax, qc_i_layernorm (a block per row), qc_i_gelu, qc_i_add
 *
 * Every kernel is extern "C" and compiles with NVRTC and, under QC_EMULATE, with g++, where
 * each has a host launcher `<kernel>_launch` (emulator_transformer.py calls them).
 */
#pragma once

#include "transformer_gemm.cuh"
#include "transformer_rows.cuh"
