// The pool of large CPU outputs (why and how: output_pool.h). Compiled once, with the default
// flags: one pool per process, shared by both ISA variants of the kernels.
#include "output_pool.h"

#include "../gc_ops.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <iterator>
#include <map>
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

// A new block: 2 MiB-aligned, advised huge pages (advice only: without THP it stays 4 KiB pages);
// nullptr when the system has no memory for it.
void* new_block(int64_t bytes) {
  void* p = std::aligned_alloc(static_cast<size_t>(kHugePageBytes), static_cast<size_t>(bytes));
  if (p == nullptr) return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  (void)madvise(p, static_cast<size_t>(bytes), MADV_HUGEPAGE);
#endif
  return p;
}

class Pool {
 public:
  // Never destroyed: a tensor freed during static destruction still finds its pool.
  static Pool& get() {
    static Pool* pool = [] {
      Pool* p = new Pool(read_cap_bytes());
#if defined(__linux__)
      // A forked child (a DataLoader worker) gets a copy of the lock, held if another thread of
      // the parent held it at the fork: give the child a fresh one.
      pthread_atfork(nullptr, nullptr, [] { new (&Pool::get().mu_) std::mutex(); });
#endif
      return p;
    }();
    return *pool;
  }

  int64_t cap() const { return cap_; }

  // A block of at least `bytes` (a multiple of 2 MiB): the smallest kept one if it is at most 25%
  // larger, else a new one.
  std::pair<void*, int64_t> take(int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 4) {
        it = std::prev(free_.upper_bound(it->first));  // of that size, the last freed (warmest)
        const std::pair<void*, int64_t> block{it->second, it->first};
        free_.erase(it);
        cached_ -= block.second;
        live_ += block.second;
        ++hits_;
        return block;
      }
    }
    void* p = new_block(bytes);  // (outside the lock)
    if (p == nullptr) {  // out of memory: give back what the pool keeps, and try once more
      release();
      p = new_block(bytes);
      TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "gcrepro: out of CPU memory allocating an output of ",
                       bytes, " bytes");
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++misses_;
    live_ += bytes;
    return {p, bytes};
  }

  // A block whose tensor was freed (any thread): kept while the cap allows, else freed.
  void give(void* p, int64_t bytes) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_ -= bytes;
      if (bytes > cap_) {
        evicted.push_back(p);
      } else {
        while (cached_ + bytes > cap_) {  // make room: smallest kept blocks first
          auto it = free_.begin();
          cached_ -= it->first;
          evicted.push_back(it->second);
          free_.erase(it);
        }
        free_.emplace(bytes, p);
        cached_ += bytes;
      }
    }
    for (void* q : evicted) std::free(q);
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
    for (auto& [size, p] : kept) std::free(p);
    return bytes;
  }

  OutputPoolStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {cap_, cached_, static_cast<int64_t>(free_.size()), live_, hits_, misses_};
  }

 private:
  explicit Pool(int64_t cap) : cap_(cap) {}

  std::mutex mu_;
  std::multimap<int64_t, void*> free_;  // kept blocks by size
  const int64_t cap_;
  int64_t cached_ = 0, live_ = 0, hits_ = 0, misses_ = 0;
};

}  // namespace

at::Tensor empty_4d_cpu(const at::Tensor& like, bool nhwc) {
  const int64_t N = like.size(0), C = like.size(1), H = like.size(2), W = like.size(3);
  const int64_t bytes = N * C * H * W * static_cast<int64_t>(like.element_size());
  Pool& pool = Pool::get();
  if (bytes < kPoolMinBytes || pool.cap() == 0) return empty_4d(like, nhwc);
  const int64_t block_bytes = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  auto [p, got] = pool.take(block_bytes);
  // Dense strides of [N, C, H, W]: contiguous, or channels_last (C fastest), as at::empty gives them.
  const std::vector<int64_t> strides =
      nhwc ? std::vector<int64_t>{H * W * C, 1, W * C, C} : std::vector<int64_t>{C * H * W, H * W, W, 1};
  return at::from_blob(
      p, like.sizes(), strides, [got = got](void* q) { Pool::get().give(q, got); },
      like.options());
}

OutputPoolStats output_pool_stats() { return Pool::get().stats(); }

int64_t output_pool_release() { return Pool::get().release(); }

}  // namespace gcrepro
