#include "client/src/inbox.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace throttlex::client::detail {

Inbox::Inbox() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

Inbox::~Inbox() {
  if (fd_ >= 0) ::close(fd_);
}

bool Inbox::post(std::unique_ptr<Job> job) {
  bool wake = false;
  {
    MutexLock guard(mu_);
    if (closed_) return false;
    queue_.push_back(std::move(job));
    // Only the first post after a drain writes the eventfd: a burst costs one syscall.
    wake = !std::exchange(wake_pending_, true);
  }
  if (wake) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(fd_, &one, sizeof one);
  }
  return true;
}

void Inbox::close() {
  {
    MutexLock guard(mu_);
    if (closed_) return;
    closed_ = true;
  }
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(fd_, &one, sizeof one);
}

bool Inbox::drain(Core& core) {
  // Reset the counter first, then take the queue: a post that lands after the swap writes the
  // eventfd again (wake_pending_ was cleared), so the edge-triggered observer fires once more.
  std::uint64_t value = 0;
  while (::read(fd_, &value, sizeof value) == static_cast<ssize_t>(sizeof value)) {
  }
  std::vector<std::unique_ptr<Job>> jobs;
  bool closed = false;
  {
    MutexLock guard(mu_);
    jobs.swap(queue_);
    wake_pending_ = false;
    closed = closed_;
  }
  for (auto& job : jobs) job->run(core);
  return closed;
}

kj::Promise<void> Inbox::run(kj::UnixEventPort::FdObserver& observer, Core& core) {
  if (drain(core)) return kj::READY_NOW;
  return observer.whenBecomesReadable().then(
      [this, &observer, &core] { return run(observer, core); });
}

}  // namespace throttlex::client::detail
