/* The integer steps of the I-BERT ops (qcompile.ops.integer_only) as device functions.
 *
 * The reference computes in torch int64, whose +, - and * wrap modulo 2^64 and whose >> is
 * arithmetic. Here every product and sum that could leave int64 for some argument is done
 * on uint64 and read back as two's complement (the same ring), and left shifts of values
 * that may be negative go through uint64, so every result equals the reference's int64,
 * wrapping included. Divisions follow the reference's rounding, never C's truncation:
 * floor_div is Python's //, round_div rounds half up.
 */
#pragma once

#include "emulate.h"

namespace qc_tf {

constexpr int kExpBits = 14;              // softmax: ln2 is 2^14 input units
constexpr int64_t kExpB = 31981;          // round(1.353 / S_T)
constexpr int64_t kExpC = 536251543;      // EXP_B^2 - 2 * (EXP_B - 2^14)^2
constexpr int64_t kExpMaxShift = 31;      // L < 2^31, so L >> 31 == 0
constexpr int kProbBits = 30;             // softmax probabilities: 30 fraction bits
constexpr int64_t kErfB = 1811;           // gelu: round(1.769 / S_U)
constexpr int64_t kErfOne = 3630803;      // round(1 / (0.2888 * S_U^2))
constexpr int kMeanBits = 8;              // layernorm: mean with 8 fraction bits
constexpr int kVarShift = 6;              // den = 2^(6 + 8) * std
constexpr int kNormBits = 10;             // normalized value: 10 fraction bits
constexpr int64_t kWideMin = -(1 << 15), kWideMax = (1 << 15) - 1;
constexpr int64_t kSoftmaxLowest = -((int64_t)1 << 40);  // the max of a fully masked row
constexpr int64_t kIsqrtStart = (int64_t)1 << 32;       // > sqrt(n) for every n < 2^63

__device__ __forceinline__ int64_t wrap_add(int64_t a, int64_t b) {
  return (int64_t)((uint64_t)a + (uint64_t)b);
}

__device__ __forceinline__ int64_t wrap_mul(int64_t a, int64_t b) {
  return (int64_t)((uint64_t)a * (uint64_t)b);
}

/* torch.bitwise_left_shift on int64: the two's-complement bits moved left. */
__device__ __forceinline__ int64_t shl(int64_t v, int s) { return (int64_t)((uint64_t)v << s); }

/* rounding_right_shift: (v + 2^(s-1)) >> s, arithmetic shift, s in [1, 62]. */
__device__ __forceinline__ int64_t rrs(int64_t v, int32_t s) {
  return wrap_add(v, (int64_t)1 << (s - 1)) >> s;
}

__device__ __forceinline__ int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

/* Python's a // b for b > 0 (C's / truncates toward zero). */
__device__ __forceinline__ int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return q * b > a ? q - 1 : q;  // truncated up (a < 0, inexact): one less
}

/* a / b rounded half up, b > 0: floor((2a + b) / 2b). */
__device__ __forceinline__ int64_t round_div(int64_t a, int64_t b) {
  return floor_div(wrap_add(wrap_mul(2, a), b), 2 * b);
}

/* The reference's requantize to int8: clamp(rrs(acc * M, n) + out_zp, qmin, qmax). */
__device__ __forceinline__ int8_t requant8(int64_t acc, int32_t mult, int32_t shift,
                                           int32_t out_zp, int32_t qmin, int32_t qmax) {
  return (int8_t)clamp64(wrap_add(rrs(wrap_mul(acc, mult), shift), out_zp), qmin, qmax);
}

/* i_linear / i_add output: a 16-bit value kept in int32. */
__device__ __forceinline__ int32_t clamp_wide(int64_t v) {
  return (int32_t)clamp64(v, kWideMin, kWideMax);
}

/* i_exp for t <= 0: z = (-t) >> 14, p = t + z * 2^14 in (-2^14, 0],
 * L = (p + EXP_B)^2 + EXP_C, result L >> min(z, 31). */
__device__ __forceinline__ int64_t i_exp(int64_t t) {
  int64_t z = (-t) >> kExpBits;
  int64_t p = t + shl(z, kExpBits);
  int64_t poly = (p + kExpB) * (p + kExpB) + kExpC;
  return poly >> (z < kExpMaxShift ? z : kExpMaxShift);
}

/* i_erf: sgn(u) * (ERF_ONE - (min(|u|, ERF_B) - ERF_B)^2). */
__device__ __forceinline__ int64_t i_erf(int64_t u) {
  int64_t mag = u < 0 ? -u : u;
  int64_t clipped = (mag < kErfB ? mag : kErfB) - kErfB;
  int64_t e = kErfOne - clipped * clipped;
  return u > 0 ? e : (u < 0 ? -e : 0);
}

/* The reference's isqrt: Newton from 2^32 downwards, y = (x + n // max(x, 1)) // 2 while
 * y < x; exact floor(sqrt(n)) for 0 <= n < 2^63. A negative n (where the reference raises)
 * gives 0. */
__device__ __forceinline__ int64_t isqrt(int64_t n) {
  if (n <= 0) return 0;
  int64_t x = kIsqrtStart;
  for (;;) {
    int64_t y = (x + n / (x > 1 ? x : 1)) / 2;
    if (y >= x) return x;
    x = y;
  }
}

}  // namespace qc_tf
