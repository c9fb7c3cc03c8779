// Background removal of recovered state: a thread that sweeps a slice of the store's shards every
// few milliseconds, so every shard is visited about once a second and tables shrink after bursts.
#pragma once

#include <condition_variable>
#include <mutex>
#include <thread>

#include "limiter/clock.h"
#include "limiter/mutex.h"
#include "limiter/store.h"

namespace throttlex {

class Sweeper {
 public:
  Sweeper(Store& store, const Clock& clock,
          std::chrono::milliseconds full_pass = std::chrono::milliseconds(1000));
  ~Sweeper();  // stop()s
  void stop();

 private:
  void run();

  Store& store_;
  const Clock& clock_;
  const std::chrono::milliseconds full_pass_;
  Mutex mu_;
  std::condition_variable cv_;
  bool stopping_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace throttlex
