/* The PTX instructions the cuda-int8 kernels use, as named device functions.
 *
 * This is the only file with inline PTX. Each wrapper has a CPU twin (under QC_EMULATE)
 * that implements the warp-wide semantics of the PTX ISA: a lane publishes its operands
 * through the per-warp exchange of emulate.h, and computes its own results from all lanes'
 * operands using the documented fragment layouts (groupID = lane >> 2, threadID_in_group =
 * lane % 4). All 32 lanes of a warp must call a warp-wide wrapper together.
 */
#pragma once

#include "emulate.h"

#ifndef QC_EMULATE

/* d = a * b + c for one 16x8x32 tile of s8 x s8 -> s32 (A row-major, B column-major). */
__device__ __forceinline__ void mma_m16n8k32_s8(int32_t c[4], const uint32_t a[4],
                                                const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Four 8x8 b16 matrices from shared memory; lane 8*i + j gives row j of matrix i. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row_ptr) {
  unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem_row_ptr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

/* Asynchronous 16-byte global -> shared copy; bytes past src_bytes (0 or 16) are zeros. */
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, int src_bytes) {
  unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr),
               "l"(__cvta_generic_to_global(gmem)), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Waits until at most N committed cp.async groups of this thread are still in flight. */
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#else

namespace qc_emu {

struct MmaOperands {
  uint32_t a[4];
  uint32_t b[2];
};

inline int32_t byte_of(uint32_t word, unsigned k) {
  return static_cast<int8_t>(static_cast<uint8_t>(word >> (8 * (k & 3))));
}

/* A[row][k] of the 16x32 operand: lane (row % 8) * 4 + (k % 16) / 4, register
 * row / 8 + 2 * (k / 16), byte k % 4. */
inline int32_t mma_a(const MmaOperands* lanes, unsigned row, unsigned k) {
  unsigned lane = (row & 7) * 4 + ((k & 15) >> 2);
  return byte_of(lanes[lane].a[(row >> 3) + 2 * (k >> 4)], k);
}

/* B[k][col] of the 32x8 operand: lane col * 4 + (k % 16) / 4, register k / 16. */
inline int32_t mma_b(const MmaOperands* lanes, unsigned k, unsigned col) {
  unsigned lane = col * 4 + ((k & 15) >> 2);
  return byte_of(lanes[lane].b[k >> 4], k);
}

}  // namespace qc_emu

/* CPU twin: this lane's four accumulators c[i] sit at row groupID + 8 * (i / 2), column
 * 2 * threadID_in_group + i % 2; they wrap modulo 2^32 as the s32 instruction does. */
inline void mma_m16n8k32_s8(int32_t c[4], const uint32_t a[4], const uint32_t b[2]) {
  qc_emu::MmaOperands mine;
  std::memcpy(mine.a, a, sizeof(mine.a));
  std::memcpy(mine.b, b, sizeof(mine.b));
  const qc_emu::MmaOperands* lanes = qc_emu::warp_exchange(mine);
  unsigned lane = qc_emu::lane_id();
  for (unsigned i = 0; i < 4; ++i) {
    unsigned row = (lane >> 2) + 8 * (i >> 1), col = 2 * (lane & 3) + (i & 1);
    uint32_t sum = static_cast<uint32_t>(c[i]);
    for (unsigned k = 0; k < 32; ++k)
      sum += static_cast<uint32_t>(qc_emu::mma_a(lanes, row, k) * qc_emu::mma_b(lanes, k, col));
    c[i] = static_cast<int32_t>(sum);
  }
}

/* CPU twin: register i of lane l is the 32-bit word l % 4 of row l / 4 of matrix i, whose
 * 16-byte row lies at the address lane 8 * i + l / 4 gave. */
inline void ldmatrix_x4(uint32_t r[4], const void* smem_row_ptr) {
  qc_emu::check_shared(smem_row_ptr, 16, 16);
  const void* const* rows = qc_emu::warp_exchange(smem_row_ptr);
  unsigned lane = qc_emu::lane_id();
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned char* row = static_cast<const unsigned char*>(rows[8 * i + lane / 4]);
    std::memcpy(&r[i], row + 4 * (lane % 4), 4);
  }
}

/* CPU twin: the source is read now; the destination gets 0xCD bytes now (its content is
 * undefined until the wait, and overwriting a stage other warps still read is a race that
 * ThreadSanitizer then sees) and the data only when a cp_async_wait retires the group, so a
 * kernel that reads before waiting reads garbage. */
inline void cp_async_16_zfill(void* smem, const void* gmem, int src_bytes) {
  qc_emu::check_shared(smem, 16, 16);
  if (src_bytes != 0 && src_bytes != 16) qc_emu::fail("cp.async src_bytes must be 0 or 16");
  if (src_bytes && reinterpret_cast<uintptr_t>(gmem) % 16) qc_emu::fail("misaligned cp.async");
  qc_emu::PendingCopy copy;
  copy.dst = smem;
  std::memset(copy.bytes, 0, sizeof(copy.bytes));
  if (src_bytes) std::memcpy(copy.bytes, gmem, 16);
  std::memset(smem, 0xCD, 16);
  qc_emu::t_state.open_group.push_back(copy);
}

inline void cp_async_commit() {
  qc_emu::t_state.committed_groups.push_back(std::move(qc_emu::t_state.open_group));
  qc_emu::t_state.open_group.clear();
}

template <int N>
void cp_async_wait() {
  auto& groups = qc_emu::t_state.committed_groups;
  while (groups.size() > static_cast<size_t>(N)) {
    for (const qc_emu::PendingCopy& copy : groups.front())
      std::memcpy(copy.dst, copy.bytes, sizeof(copy.bytes));
    groups.pop_front();
  }
}

#endif

/* Asynchronous 16-byte global -> shared copy (both addresses 16-byte aligned). */
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  cp_async_16_zfill(smem, gmem, 16);
}
