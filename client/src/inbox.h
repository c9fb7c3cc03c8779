// Hands work from any thread to the client's KJ thread: a mutex-guarded queue plus an eventfd that
// the KJ event loop watches. One wake-up drains everything posted since the last one, so a burst
// of checks from many threads reaches the loop together (and can leave as one batch).
#pragma once

#include <kj/async-unix.h>
#include <kj/async.h>

#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "limiter/mutex.h"

namespace throttlex::client::detail {

class Core;

// A unit of work for the client thread. Move-only (std::function would force copyable captures).
class Job {
 public:
  virtual ~Job() = default;
  virtual void run(Core& core) = 0;
};

template <typename F>
std::unique_ptr<Job> makeJob(F f) {
  struct Impl final : Job {
    explicit Impl(F fn) : fn_(std::move(fn)) {}
    void run(Core& core) override { fn_(core); }
    F fn_;
  };
  return std::make_unique<Impl>(std::move(f));
}

class Inbox {
 public:
  Inbox();  // check ok() afterwards: creating the eventfd can fail (out of descriptors)
  ~Inbox();
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;

  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }

  // Any thread. false once close() was called: the job was not taken (it is destroyed here).
  bool post(std::unique_ptr<Job> job);
  // Any thread. Later posts fail; the loop runs what was posted before and then ends.
  void close();

  // Client thread: runs posted jobs until close(); resolves after the last one ran. `observer`
  // watches fd() for reading and must outlive the returned promise.
  kj::Promise<void> run(kj::UnixEventPort::FdObserver& observer, Core& core);

 private:
  bool drain(Core& core);  // true once closed

  const int fd_;
  Mutex mu_;
  std::vector<std::unique_ptr<Job>> queue_ GUARDED_BY(mu_);
  bool wake_pending_ GUARDED_BY(mu_) = false;  // the eventfd was written, not yet read
  bool closed_ GUARDED_BY(mu_) = false;
};

}  // namespace throttlex::client::detail
