#include "daemon/service/sweeper.h"
#include "limiter/mutex.h"

namespace throttlex {

namespace {
constexpr std::chrono::milliseconds kTick{10};
}

Sweeper::Sweeper(Store& store, const Clock& clock, std::chrono::milliseconds full_pass)
    : store_(store), clock_(clock), full_pass_(full_pass), thread_([this] { run(); }) {}

Sweeper::~Sweeper() {
  stop();
}

void Sweeper::stop() {
  {
    MutexLock guard(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Sweeper::run() {
  const auto ticks = std::max<std::int64_t>(1, full_pass_ / kTick);
  const std::size_t per_tick =
      std::max<std::size_t>(1, store_.shardCount() / static_cast<std::size_t>(ticks));
  MutexLock lock(mu_);
  while (!cv_.wait_for(lock.native(), kTick, [this]() REQUIRES(mu_) { return stopping_; })) {
    lock.unlock();
    store_.sweep(clock_.now(), per_tick);
    lock.lock();
  }
}

}  // namespace throttlex
