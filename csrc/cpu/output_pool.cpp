// The pool of large CPU outputs (why and how: output_pool.h). Compiled once, with the default
// flags: one pool per process, shared by both ISA variants of the kernels.
#include "output_pool.h"

#include "../gc_ops.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace gcrepro {
namespace {

int64_t read_cap_bytes() {
  const char* env = std::getenv("GCREPRO_CPU_POOL_MB");
  if (env == nullptr || *env == '\0') return int64_t(1024) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK(*end == '\0' && mb >= 0 && mb < (int64_t(1) << 40),
              "gcrepro: GCREPRO_CPU_POOL_MB must be a whole number of MiB >= 0 (0 turns the CPU output pool off), "
              "got '", env, "'");
  return static_cast<int64_t>(mb) << 20;
}

// A new block of `bytes` (a multiple of 2 MiB), 2 MiB-aligned, advised huge pages (advice only:
// without THP it stays 4 KiB pages); nullptr when the system has no memory for it. On Linux a
// mapping of its own, so that freeing it returns the memory whatever malloc the process uses.
void* map_block(int64_t bytes) {
#if defined(__linux__)
  const size_t len = static_cast<size_t>(bytes + kHugePageBytes);
  void* raw = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (begin + kHugePageBytes - 1) & ~uintptr_t(kHugePageBytes - 1);
  if (aligned > begin) munmap(raw, aligned - begin);  // trim to the aligned block
  const uintptr_t end = begin + len, block_end = aligned + static_cast<uintptr_t>(bytes);
  if (end > block_end) munmap(reinterpret_cast<void*>(block_end), end - block_end);
#if defined(MADV_HUGEPAGE)
  (void)madvise(reinterpret_cast<void*>(aligned), static_cast<size_t>(bytes), MADV_HUGEPAGE);
#endif
  return reinterpret_cast<void*>(aligned);
#else
  return std::aligned_alloc(static_cast<size_t>(kHugePageBytes), static_cast<size_t>(bytes));
#endif
}

void unmap_block(void* p, int64_t bytes) {
#if defined(__linux__)
  munmap(p, static_cast<size_t>(bytes));
#else
  (void)bytes;
  std::free(p);
#endif
}

using Block = std::pair<void*, int64_t>;  // (address, bytes)

class Pool {
 public:
  // Never destroyed: a tensor freed during static destruction still finds its pool.
  static Pool& get() {
    static Pool* pool = [] {
      auto* p = new Pool(read_cap_bytes());
      instance_ = p;
#if defined(__linux__)
      // fork() copies the pool as it is: hold the lock across it, so that no other thread is
      // halfway through changing the kept blocks, and the child (a DataLoader worker) starts
      // with a free lock.
      pthread_atfork([] { instance_->mu_.lock(); }, [] { instance_->mu_.unlock(); },
                     [] { new (&instance_->mu_) std::mutex(); });
#endif
      return p;
    }();
    return *pool;
  }

  int64_t cap() const { return cap_; }

  // A block of at least `bytes` (a multiple of 2 MiB): the smallest kept one if it is at most 25%
  // larger, else a new one.
  Block take(int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 4) {
        it = std::prev(free_.upper_bound(it->first));  // of that size, the last freed (warmest)
        const Block block{it->second, it->first};
        free_.erase(it);
        cached_ -= block.second;
        live_ += block.second;
        ++hits_;
        return block;
      }
    }
    void* p = map_block(bytes);  // (outside the lock)
    if (p == nullptr) {  // out of memory: give back what the pool keeps, and try once more
      release();
      p = map_block(bytes);
      TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "gcrepro: out of CPU memory allocating an output of ",
                       bytes, " bytes");
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++misses_;
    live_ += bytes;
    return {p, bytes};
  }

  // A block whose tensor was freed (any thread; never throws): kept while the cap allows, else
  // unmapped.
  void give(Block block) noexcept {
    std::vector<Block> evicted;
    bool kept = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_ -= block.second;
      if (block.second <= cap_) {
        try {
          evicted.reserve(free_.size());
          while (cached_ + block.second > cap_) {  // make room: smallest kept blocks first
            auto it = free_.begin();
            cached_ -= it->first;
            evicted.emplace_back(it->second, it->first);
            free_.erase(it);
          }
          free_.emplace(block.second, block.first);
          cached_ += block.second;
          kept = true;
        } catch (const std::bad_alloc&) {  // no memory for the bookkeeping: unmap instead
        }
      }
    }
    if (!kept) unmap_block(block.first, block.second);
    for (const Block& b : evicted) unmap_block(b.first, b.second);
  }

  int64_t release() {
    std::multimap<int64_t, void*> kept;
    int64_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      kept.swap(free_);
      bytes = cached_;
      cached_ = 0;
    }
    for (auto& [size, p] : kept) unmap_block(p, size);
    return bytes;
  }

  OutputPoolStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {cap_, cached_, static_cast<int64_t>(free_.size()), live_, hits_, misses_};
  }

 private:
  explicit Pool(int64_t cap) : cap_(cap) {}

  static inline Pool* instance_ = nullptr;  // for the fork handlers (they must not run get())
  std::mutex mu_;
  std::multimap<int64_t, void*> free_;  // kept blocks by size
  const int64_t cap_;
  int64_t cached_ = 0, live_ = 0, hits_ = 0, misses_ = 0;
};

// The DataPtr's context: the block, handed back to the pool when the storage is freed.
void return_block(void* ctx) {
  std::unique_ptr<Block> block(static_cast<Block*>(ctx));
  Pool::get().give(*block);
}

}  // namespace

at::Tensor empty_4d_cpu(const at::Tensor& like, bool nhwc) {
  const int64_t N = like.size(0), C = like.size(1), H = like.size(2), W = like.size(3);
  const int64_t bytes = N * C * H * W * static_cast<int64_t>(like.element_size());
  Pool& pool = Pool::get();
  if (bytes < kPoolMinBytes || pool.cap() == 0) return empty_4d(like, nhwc);
  // Dense strides of [N, C, H, W]: contiguous, or channels_last (C fastest), as at::empty gives them.
  const std::vector<int64_t> strides =
      nhwc ? std::vector<int64_t>{H * W * C, 1, W * C, C} : std::vector<int64_t>{C * H * W, H * W, W, 1};
  at::Tensor out = at::empty({0}, like.options());
  const Block taken = pool.take((bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes);
  std::unique_ptr<Block> block;
  try {
    block = std::make_unique<Block>(taken);
  } catch (...) {
    pool.give(taken);
    throw;
  }
  void* p = block->first;
  // From here the DataPtr owns the block (returned to the pool when the storage goes). The
  // storage keeps torch's CPU allocator, so resize_ to a larger size works as on any tensor
  // (it moves the data to memory from that allocator and the block returns to the pool).
  at::DataPtr data(p, block.release(), &return_block, at::Device(at::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, std::move(data), c10::GetDefaultCPUAllocator(),
                       /*resizable=*/true);
  out.set_(storage, 0, like.sizes(), strides);
  return out;
}

OutputPoolStats output_pool_stats() { return Pool::get().stats(); }

int64_t output_pool_release() { return Pool::get().release(); }

}  // namespace gcrepro
