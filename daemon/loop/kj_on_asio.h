// A KJ event loop driven by an Asio io_context on the same thread, so that one thread serves HTTP
// (Asio) and speaks Cap'n Proto RPC to its peers (KJ) without handing anything to another thread
// (docs/architecture.md, "Threads").
//
// Asio stays the outer loop: KJ's EventPort is told when KJ has work (setRunnable) and posts one
// handler that runs KJ's queue. KJ timers are a kj::TimerImpl advanced from the injected clock and
// woken by one asio::steady_timer armed for the next KJ deadline. Sockets are KJ streams whose
// reads and writes are non-blocking system calls, waiting for readiness through the io_context
// (as KJ's own UnixEventPort does with epoll), so a cancelled KJ read never leaves a buffer with
// Asio.
//
// Not supported on such a loop: KJ's cross-thread events (kj::Executor,
// newPromiseAndCrossThreadFulfiller) and blocking waits (Promise::wait). Code that runs on either
// kind of loop and is woken from another thread uses crossThreadSignal() (below).
#pragma once

#include <kj/async-io.h>
#include <kj/timer.h>

#include <functional>
#include <memory>
#include <string>

#include "limiter/clock.h"

namespace asio {
class io_context;
}

namespace throttlex {

class KjOnAsio {
 public:
  // On the thread that runs `io`, which must also destroy it. `clock` (monotonic reading) drives
  // KJ's timer; `io` and `clock` must outlive this.
  KjOnAsio(asio::io_context& io, const Clock& clock);
  ~KjOnAsio();
  KjOnAsio(const KjOnAsio&) = delete;
  KjOnAsio& operator=(const KjOnAsio&) = delete;

  kj::Timer& timer();
  // Connects to "host:port" ("[v6]:port" too; names resolved by Asio) with TCP_NODELAY. Dropping
  // the promise abandons the attempt and closes its socket.
  kj::Promise<kj::Own<kj::AsyncIoStream>> connect(const std::string& address);
  // A connected, non-blocking socket as a KJ stream; the stream owns `fd`.
  kj::Own<kj::AsyncIoStream> wrap(int fd);
  // A bound, listening, non-blocking socket as a KJ listener, which owns `fd`. accept() gives
  // TCP_NODELAY streams; a failed accept (out of descriptors) is thrown from the call itself, as
  // KJ's own listener does.
  kj::Own<kj::ConnectionReceiver> listen(int fd);
  // Runs KJ's queue until it is empty (e.g. the completions a shutdown caused), and stops arming
  // the timer when `last` is true (the thread is about to end).
  void settle(bool last = false);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// A promise another thread may fulfil, on whichever kind of KJ loop the calling thread runs: on a
// KjOnAsio loop the fulfilment is posted to its io_context (and done at once when it comes from
// that thread); on KJ's own loop it is KJ's cross-thread fulfiller. `fulfill` is called at most
// once; the promise is consumed on the calling thread.
struct CrossThreadSignal {
  kj::Promise<void> promise = nullptr;
  std::function<void()> fulfill;
};
CrossThreadSignal crossThreadSignal();

// Something served on a worker thread's KJ loop besides its forwarding (the RPC server, hosted
// on the HTTP threads): made on that thread, stopped there before the loop goes.
class LoopService {
 public:
  virtual ~LoopService() = default;
  // Stops taking new work; what is open closes when the object is destroyed.
  virtual void stop() = 0;
};
using LoopServiceFactory = std::function<std::unique_ptr<LoopService>(KjOnAsio&)>;

}  // namespace throttlex
