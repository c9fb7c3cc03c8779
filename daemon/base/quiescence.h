// Waiting until every thread that might still be deciding on an old view of a slot has finished
// (a grace period, as in RCU). The slot keeper changes a slot's mode, then waits, and only then
// reads or removes the slot's state: a check that saw the old mode has written its decision by
// then, so a handoff never misses it.
//
// Deciding threads wrap the read of a slot's mode and the decision in a Guard: a store of their
// own counter (odd while inside) and a fence, no shared write. wait() spins (yielding) until each
// thread that was inside when it started has left; it is meant for rare events (ring changes).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "limiter/mutex.h"

namespace throttlex {

class Quiescence {
 public:
  class Guard {
   public:
    explicit Guard(Quiescence* q) : counter_(q != nullptr ? &q->mine() : nullptr) {
      if (counter_ == nullptr) return;
      const std::uint64_t v = counter_->load(std::memory_order_relaxed);
      if (v % 2 == 1) {  // nested in a guard of this thread: that one covers it
        counter_ = nullptr;
        return;
      }
      counter_->store(v + 1, std::memory_order_relaxed);
      // Orders the counter's store before the mode loads that follow (store-load).
      std::atomic_thread_fence(std::memory_order_seq_cst);
    }
    ~Guard() {
      if (counter_ != nullptr) {
        counter_->store(counter_->load(std::memory_order_relaxed) + 1, std::memory_order_release);
      }
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    std::atomic<std::uint64_t>* counter_;
  };

  // Returns once every Guard that existed when it was called is gone. Call after changing the
  // state that guarded sections read.
  void wait() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    std::vector<std::pair<std::atomic<std::uint64_t>*, std::uint64_t>> inside;
    {
      MutexLock guard(mu_);
      for (auto& c : counters_) {
        const std::uint64_t v = c->value.load(std::memory_order_acquire);
        if (v % 2 == 1) inside.emplace_back(&c->value, v);
      }
    }
    for (auto& [counter, seen] : inside) {
      while (counter->load(std::memory_order_acquire) == seen) std::this_thread::yield();
    }
  }

 private:
  struct alignas(64) Counter {
    std::atomic<std::uint64_t> value{0};
  };

  // This thread's counter, registered on first use. Counters live as long as the Quiescence
  // (threads come and go rarely: a few per node).
  std::atomic<std::uint64_t>& mine() {
    // By instance id, not address: a test may build a new Quiescence where an old one was.
    thread_local std::vector<std::pair<std::uint64_t, std::atomic<std::uint64_t>*>> cache;
    for (auto& [owner, counter] : cache) {
      if (owner == id_) return *counter;
    }
    MutexLock guard(mu_);
    counters_.push_back(std::make_unique<Counter>());
    cache.emplace_back(id_, &counters_.back()->value);
    return counters_.back()->value;
  }

  static inline std::atomic<std::uint64_t> instances_{1};
  const std::uint64_t id_ = instances_.fetch_add(1);
  Mutex mu_;
  std::vector<std::unique_ptr<Counter>> counters_ GUARDED_BY(mu_);  // never shrinks
};

}  // namespace throttlex
