/* Platform layer of the cuda-int8 kernels, included by every kernel source on both sides.
 *
 * Under NVRTC (no standard headers there) it supplies the fixed-width integer typedefs and
 * QC_SHARED. Under the host compiler with -DQC_EMULATE it supplies a CUDA execution model
 * for the same source: each CUDA thread is one OS thread, blocks run one after another,
 * threadIdx/blockIdx/blockDim/gridDim are thread-locals, __syncthreads() is a block barrier,
 * and the per-warp exchange that the warp-wide instruction twins of ptx.cuh use.
 *
 * Shared memory is declared with QC_SHARED(type, name, count) at the top level of a kernel,
 * or of a device function it calls once (never inside a branch or loop): on the GPU a
 * static __shared__ array, in emulation a pointer into the block's arena. Every thread of a
 * block runs the same declarations in the same order, so every thread gets the same
 * pointer. The arena starts filled with 0xA5, as real shared memory starts with whatever
 * was there; a kernel relying on zeros shows it.
 * `__shared__` itself is left undefined in emulation, so a stray use fails to compile.
 * As on the GPU, every thread of a block must reach every __syncthreads() and all lanes of
 * a warp every warp-wide instruction; in emulation a thread that skips one hangs its block.
 *
 * QC_UNROLL before a loop of fixed trip count asks NVRTC to unroll it (register arrays
 * indexed by its counter then stay in registers); the host compiler ignores it.
 */
#pragma once

#ifndef QC_EMULATE

typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;

#define QC_SHARED(type, name, count) __shared__ __align__(16) type name[count]
#define QC_UNROLL _Pragma("unroll")

#else

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define QC_UNROLL

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace qc_emu {

constexpr unsigned kWarpSize = 32;
constexpr size_t kSharedBytes = 228 * 1024;
constexpr size_t kExchangeBytes = 64;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "qc_emu: %s\n", what);
  std::abort();
}

/* A reusable barrier for a fixed number of threads (generation counting). */
class Barrier {
 public:
  explicit Barrier(unsigned count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    unsigned generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation != generation_; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  unsigned count_, arrived_ = 0, generation_ = 0;
};

/* Two exchange buffers used alternately: a lane can publish into one while a slower lane
 * still reads the other, so each warp-wide operation needs a single barrier. */
struct Warp {
  explicit Warp(unsigned lanes) : barrier(lanes) {}
  Barrier barrier;
  alignas(16) unsigned char slots[2][kWarpSize][kExchangeBytes];
};

struct Block {
  explicit Block(unsigned threads) : barrier(threads), shared(kSharedBytes, 0xA5) {
    for (unsigned first = 0; first < threads; first += kWarpSize) {
      unsigned lanes = threads - first < kWarpSize ? threads - first : kWarpSize;
      warps.emplace_back(new Warp(lanes));
    }
  }
  Barrier barrier;
  std::vector<unsigned char> shared;
  std::vector<std::unique_ptr<Warp>> warps;
};

struct PendingCopy {
  void* dst;
  unsigned char bytes[16];
};

/* What one emulated CUDA thread carries besides its registers. */
struct ThreadState {
  Block* block = nullptr;
  size_t shared_used = 0;
  unsigned exchange_parity = 0;
  std::vector<PendingCopy> open_group;
  std::deque<std::vector<PendingCopy>> committed_groups;
};

inline thread_local ThreadState t_state;

inline unsigned linear_thread_id() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

inline unsigned lane_id() { return linear_thread_id() % kWarpSize; }

template <class T>
T* shared_array(size_t count) {
  size_t align = alignof(T) > 16 ? alignof(T) : 16;
  size_t start = (t_state.shared_used + align - 1) / align * align;
  if (start + count * sizeof(T) > kSharedBytes) fail("shared memory arena exhausted");
  t_state.shared_used = start + count * sizeof(T);
  return reinterpret_cast<T*>(t_state.block->shared.data() + start);
}

}  // namespace qc_emu

#define QC_SHARED(type, name, count) type* const name = ::qc_emu::shared_array<type>(count)

namespace qc_emu {

/* Aborts unless [p, p + bytes) lies in this block's shared memory, aligned to `align`. */
inline void check_shared(const void* p, size_t bytes, size_t align) {
  const unsigned char* base = t_state.block->shared.data();
  const unsigned char* q = static_cast<const unsigned char*>(p);
  if (q < base || q + bytes > base + kSharedBytes) fail("address is not in shared memory");
  if (reinterpret_cast<uintptr_t>(q) % align) fail("misaligned shared memory address");
}

/* Publishes `mine` to the lane's slot and returns all lanes' values, indexed by lane. The
 * result stays valid until this thread's next exchange. */
template <class T>
const T* warp_exchange(const T& mine) {
  static_assert(sizeof(T) <= kExchangeBytes, "exchange payload too large");
  Warp& warp = *t_state.block->warps[linear_thread_id() / kWarpSize];
  unsigned parity = t_state.exchange_parity;
  t_state.exchange_parity ^= 1u;
  std::memcpy(warp.slots[parity][lane_id()], &mine, sizeof(T));
  warp.barrier.wait();
  static_assert(alignof(T) <= 16, "exchange payload over-aligned");
  thread_local T gathered[kWarpSize];
  for (unsigned lane = 0; lane < kWarpSize; ++lane)
    std::memcpy(&gathered[lane], warp.slots[parity][lane], sizeof(T));
  return gathered;
}

template <class Kernel, class... Args>
void run_thread(Block* block, dim3 grid, dim3 block_dim, dim3 block_idx, dim3 thread_idx,
                Kernel kernel, Args... args) {
  t_state = ThreadState();
  t_state.block = block;
  gridDim = grid;
  blockDim = block_dim;
  blockIdx = block_idx;
  threadIdx = thread_idx;
  kernel(args...);
}

}  // namespace qc_emu

inline void __syncthreads() { qc_emu::t_state.block->barrier.wait(); }

inline void __syncwarp() {
  qc_emu::t_state.block->warps[qc_emu::linear_thread_id() / qc_emu::kWarpSize]->barrier.wait();
}

/* Runs kernel<<<grid, block>>>(args...): blocks in order, each as one OS thread per CUDA
 * thread. Returns 0, or 1 after printing why the launch is invalid; a thread that cannot
 * be started aborts the process, since its block could never pass a barrier. */
template <class... Params, class... Args>
int qc_launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
  unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads > 1024) {
    std::fprintf(stderr, "qc_launch: block of %u threads\n", threads);
    return 1;
  }
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        qc_emu::Block state(threads);
        std::vector<std::thread> pool;
        try {
          for (unsigned t = 0; t < threads; ++t) {
            dim3 tid(t % block.x, t / block.x % block.y, t / (block.x * block.y));
            pool.emplace_back(qc_emu::run_thread<void (*)(Params...), Args...>, &state, grid,
                              block, dim3(bx, by, bz), tid, kernel, args...);
          }
        } catch (const std::exception& e) {
          qc_emu::fail(e.what());
        }
        for (std::thread& th : pool) th.join();
      }
  return 0;
}

#endif
