// A value that one thread at a time replaces and many threads read on their hot path (the rule
// set, the ring). Readers keep a per-thread copy of the shared_ptr and refresh it only when the
// version counter moved: a read is one atomic load, with no lock and no shared reference count
// touched per read.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "limiter/mutex.h"

namespace throttlex {

inline std::atomic<std::uint64_t> published_instances{1};

template <typename T>
class Published {
 public:
  explicit Published(std::shared_ptr<const T> value = nullptr)
      : value_(std::move(value)), instance_(published_instances.fetch_add(1)) {}

  // Any thread. Replaces the value; readers see it at their next current().
  void publish(std::shared_ptr<const T> value) {
    MutexLock guard(mu_);
    value_ = std::move(value);
    version_.fetch_add(1, std::memory_order_release);
  }

  // The calling thread's view (may be null). The reference stays valid until this thread calls
  // current() on a Published<T> again: copy the shared_ptr to hold the value across such calls.
  const std::shared_ptr<const T>& current() const {
    Cache& c = cache();
    const std::uint64_t v = version_.load(std::memory_order_acquire);
    if (c.instance != instance_ || c.version != v) {
      MutexLock guard(mu_);
      c.value = value_;
      c.version = version_.load(std::memory_order_relaxed);
      c.instance = instance_;
    }
    return c.value;
  }

  std::shared_ptr<const T> snapshot() const {  // a copy, any thread
    MutexLock guard(mu_);
    return value_;
  }

 private:
  struct Cache {
    std::uint64_t instance = 0;  // which Published<T> the copy came from
    std::uint64_t version = 0;
    std::shared_ptr<const T> value;
  };
  static Cache& cache() {
    thread_local Cache c;
    return c;
  }

  mutable Mutex mu_;
  std::shared_ptr<const T> value_ GUARDED_BY(mu_);
  std::atomic<std::uint64_t> version_{1};
  const std::uint64_t instance_;  // tells the caches of two instances apart
};

}  // namespace throttlex
