// A test-and-test-and-set spin lock for critical sections of a few dozen nanoseconds (one store
// shard). Under contention it spins on a read, then yields, so a preempted holder is not starved.
#pragma once

#include <atomic>
#include <thread>

namespace throttlex {

class SpinLock {
 public:
  void lock() {
    for (int spins = 0;; ++spins) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins > 64) {
          std::this_thread::yield();
        } else {
          __builtin_ia32_pause();
        }
      }
    }
  }
  void unlock() { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

}  // namespace throttlex
