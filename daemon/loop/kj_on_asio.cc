#include "daemon/loop/kj_on_asio.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <kj/debug.h>
#include <asio.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "proto/address.h"

// KJ's interfaces have no virtual destructor; objects here are never deleted through them.
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"

namespace throttlex {
namespace {

kj::Exception disconnected(const char* what, int error) {
  return kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                       kj::str(what, ": ", std::strerror(error)));
}

bool wouldBlock(int error) {
  return error == EAGAIN || error == EWOULDBLOCK;
}

// Fulfilled when `descriptor` is ready for `what`; a dropped promise leaves a harmless wait.
kj::Promise<void> whenReady(asio::posix::stream_descriptor& descriptor,
                            asio::posix::descriptor_base::wait_type what) {
  auto paf = kj::newPromiseAndFulfiller<void>();
  auto fulfiller = std::make_shared<kj::Own<kj::PromiseFulfiller<void>>>(kj::mv(paf.fulfiller));
  descriptor.async_wait(what, [fulfiller](const asio::error_code& error) {
    if (!error) {
      (*fulfiller)->fulfill();
    } else {
      (*fulfiller)->reject(disconnected("wait", error.value()));
    }
  });
  return kj::mv(paf.promise);
}

// A socket as a KJ stream: non-blocking system calls; readiness waits through the io_context.
class AsioStream final : public kj::AsyncIoStream {
 public:
  AsioStream(asio::io_context& io, int fd) : descriptor_(io, fd), fd_(fd) {
    asio::error_code ignored;
    descriptor_.non_blocking(true, ignored);  // our reads and writes are non-blocking calls
  }

  kj::Promise<size_t> tryRead(void* buffer, size_t min_bytes, size_t max_bytes) override {
    return readSome(static_cast<kj::byte*>(buffer), min_bytes, max_bytes, 0);
  }

  kj::Promise<void> write(const void* buffer, size_t size) override {
    // One piece; KJ allows one write at a time, so the member lives until this one is done.
    single_ = kj::arrayPtr(static_cast<const kj::byte*>(buffer), size);
    return writePieces(kj::arrayPtr(&single_, 1), 0);
  }

  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    return writePieces(pieces, 0);
  }

  kj::Promise<void> whenWriteDisconnected() override { return kj::NEVER_DONE; }
  void shutdownWrite() override { ::shutdown(fd_, SHUT_WR); }
  void abortRead() override { ::shutdown(fd_, SHUT_RD); }

  void getsockopt(int level, int option, void* value, kj::uint* length) override {
    socklen_t len = *length;
    KJ_SYSCALL(::getsockopt(fd_, level, option, value, &len));
    *length = len;
  }
  void setsockopt(int level, int option, const void* value, kj::uint length) override {
    KJ_SYSCALL(::setsockopt(fd_, level, option, value, length));
  }
  void getsockname(struct sockaddr* addr, kj::uint* length) override {
    socklen_t len = *length;
    KJ_SYSCALL(::getsockname(fd_, addr, &len));
    *length = len;
  }
  void getpeername(struct sockaddr* addr, kj::uint* length) override {
    socklen_t len = *length;
    KJ_SYSCALL(::getpeername(fd_, addr, &len));
    *length = len;
  }
  kj::Maybe<int> getFd() const override { return fd_; }

 private:
  kj::Promise<size_t> readSome(kj::byte* buffer, size_t min_bytes, size_t max_bytes,
                               size_t already) {
    for (;;) {
      const ssize_t n = ::read(fd_, buffer, max_bytes);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (wouldBlock(errno)) break;
        return disconnected("read", errno);
      }
      if (n == 0) return already;  // end of stream
      const auto got = static_cast<size_t>(n);
      already += got;
      if (got >= min_bytes) return already;
      buffer += got;
      min_bytes -= got;
      max_bytes -= got;
    }
    return ready(asio::posix::descriptor_base::wait_read)
        .then([this, buffer, min_bytes, max_bytes, already] {
          return readSome(buffer, min_bytes, max_bytes, already);
        });
  }

  // Writes `pieces` after skipping `skip` bytes of them (what an earlier call wrote).
  kj::Promise<void> writePieces(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces,
                                size_t skip) {
    for (;;) {
      while (pieces.size() != 0 && skip >= pieces[0].size()) {
        skip -= pieces[0].size();
        pieces = pieces.slice(1, pieces.size());
      }
      if (pieces.size() == 0) return kj::READY_NOW;
      iovecs_.clear();
      for (const auto& piece : pieces) {
        if (iovecs_.size() == IOV_MAX) break;
        iovecs_.push_back({const_cast<kj::byte*>(piece.begin()), piece.size()});
      }
      iovecs_[0].iov_base = static_cast<kj::byte*>(iovecs_[0].iov_base) + skip;
      iovecs_[0].iov_len -= skip;
      msghdr message{};
      message.msg_iov = iovecs_.data();
      message.msg_iovlen = iovecs_.size();
      const ssize_t n = ::sendmsg(fd_, &message, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (wouldBlock(errno)) {
          return ready(asio::posix::descriptor_base::wait_write).then([this, pieces, skip] {
            return writePieces(pieces, skip);
          });
        }
        return disconnected("write", errno);
      }
      skip += static_cast<size_t>(n);
    }
  }

  kj::Promise<void> ready(asio::posix::descriptor_base::wait_type what) {
    return whenReady(descriptor_, what);
  }

  asio::posix::stream_descriptor descriptor_;  // owns fd_
  const int fd_;
  kj::ArrayPtr<const kj::byte> single_;  // the piece of write(buffer, size)
  std::vector<iovec> iovecs_;
};

// A listening socket as a KJ listener: non-blocking accept4(); readiness through the io_context.
class AsioListener final : public kj::ConnectionReceiver {
 public:
  AsioListener(asio::io_context& io, int fd) : io_(io), descriptor_(io, fd), fd_(fd) {}

  kj::Promise<kj::Own<kj::AsyncIoStream>> accept() override {
    for (;;) {
      const int fd = ::accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        return kj::Own<kj::AsyncIoStream>(kj::heap<AsioStream>(io_, fd));
      }
      if (errno == EINTR || errno == ECONNABORTED) continue;  // that one is gone; the next
      if (wouldBlock(errno)) break;
      KJ_FAIL_SYSCALL("accept", errno);
    }
    return whenReady(descriptor_, asio::posix::descriptor_base::wait_read).then([this] {
      return accept();
    });
  }

  kj::uint getPort() override {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    KJ_SYSCALL(::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len));
    if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  }

 private:
  asio::io_context& io_;
  asio::posix::stream_descriptor descriptor_;  // owns fd_
  const int fd_;
};

thread_local KjOnAsio::Impl* tl_current = nullptr;  // the loop this thread runs, if any

}  // namespace

struct KjOnAsio::Impl {
  // Tells Asio when KJ has work: one posted handler runs KJ's queue.
  class Port final : public kj::EventPort {
   public:
    explicit Port(Impl& impl) : impl_(impl) {}
    bool wait() override {
      impl_.io.run_one();
      return false;
    }
    bool poll() override { return false; }
    void setRunnable(bool runnable) override {
      if (runnable) impl_.schedule();
    }

   private:
    Impl& impl_;
  };

  // KJ's timer on the injected clock; every new deadline may arm the Asio timer earlier.
  class Timer final : public kj::Timer {
   public:
    explicit Timer(Impl& impl) : impl_(impl), timer_(impl.clockNow()) {}
    kj::TimePoint now() const override {
      impl_.advance();
      return timer_.now();
    }
    kj::Promise<void> atTime(kj::TimePoint time) override {
      impl_.advance();
      auto promise = timer_.atTime(time);
      impl_.arm();
      return promise;
    }
    kj::Promise<void> afterDelay(kj::Duration delay) override {
      impl_.advance();
      auto promise = timer_.afterDelay(delay);
      impl_.arm();
      return promise;
    }
    kj::TimerImpl& impl() { return timer_; }

   private:
    Impl& impl_;
    mutable kj::TimerImpl timer_;
  };

  Impl(asio::io_context& i, const Clock& c)
      : io(i), clock(c), port(*this), loop(port), wait_scope(loop), timer(*this), wakeup(i) {
    tl_current = this;
  }
  ~Impl() { tl_current = nullptr; }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  kj::TimePoint clockNow() const {
    return kj::origin<kj::TimePoint>() +
           clock.monotonic().time_since_epoch().count() * kj::NANOSECONDS;
  }
  void advance() const {
    const kj::TimePoint now = clockNow();
    if (now > timer.impl().now()) timer.impl().advanceTo(now);
  }

  void schedule() {
    if (scheduled) return;
    scheduled = true;
    asio::post(io, [this, alive = std::weak_ptr<bool>(alive)] {
      if (!alive.expired()) runLoop();
    });
  }

  void runLoop() {
    scheduled = false;
    advance();
    loop.run();
    arm();
  }

  // Arms the Asio timer for KJ's next deadline, if that is earlier than what is armed.
  void arm() {
    if (stopped) return;
    KJ_IF_MAYBE (next, timer.impl().nextEvent()) {
      if (armed && armed_for <= *next) return;
      armed = true;
      armed_for = *next;
      const kj::Duration delay = std::max(*next - timer.impl().now(), 0 * kj::NANOSECONDS);
      wakeup.expires_after(std::chrono::nanoseconds(delay / kj::NANOSECONDS));
      const std::uint64_t generation = ++arm_generation;
      wakeup.async_wait([this, generation](const asio::error_code& error) {
        if (error || generation != arm_generation) return;  // re-armed or cancelled
        armed = false;
        advance();  // fires what is due: KJ becomes runnable
        arm();
      });
    }
  }

  asio::io_context& io;
  const Clock& clock;
  Port port;
  kj::EventLoop loop;
  kj::WaitScope wait_scope;
  mutable Timer timer;
  asio::steady_timer wakeup;
  kj::TimePoint armed_for = kj::origin<kj::TimePoint>();
  std::uint64_t arm_generation = 0;
  bool armed = false;
  bool scheduled = false;
  bool stopped = false;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);  // posted handlers outliving us
};

KjOnAsio::KjOnAsio(asio::io_context& io, const Clock& clock)
    : impl_(std::make_unique<Impl>(io, clock)) {}

KjOnAsio::~KjOnAsio() {
  settle(true);
}

kj::Timer& KjOnAsio::timer() {
  return impl_->timer;
}

kj::Own<kj::AsyncIoStream> KjOnAsio::wrap(int fd) {
  return kj::heap<AsioStream>(impl_->io, fd);
}

kj::Own<kj::ConnectionReceiver> KjOnAsio::listen(int fd) {
  return kj::heap<AsioListener>(impl_->io, fd);
}

kj::Promise<kj::Own<kj::AsyncIoStream>> KjOnAsio::connect(const std::string& address) {
  std::string host;
  std::uint16_t port = 0;
  if (!proto::splitHostPort(address, host, port)) {
    return KJ_EXCEPTION(FAILED, "not host:port", address.c_str());
  }
  struct Attempt {
    explicit Attempt(asio::io_context& io) : resolver(io), socket(io) {}
    asio::ip::tcp::resolver resolver;
    asio::ip::tcp::socket socket;
    kj::Own<kj::PromiseFulfiller<int>> fulfiller;
  };
  auto attempt = std::make_shared<Attempt>(impl_->io);
  auto paf = kj::newPromiseAndFulfiller<int>();
  attempt->fulfiller = kj::mv(paf.fulfiller);
  attempt->resolver.async_resolve(
      host, std::to_string(port),
      [attempt](const asio::error_code& error, asio::ip::tcp::resolver::results_type r) {
        if (error) {
          attempt->fulfiller->reject(disconnected("resolve", error.value()));
          return;
        }
        asio::async_connect(attempt->socket, r,
                            [attempt](const asio::error_code& e, const asio::ip::tcp::endpoint&) {
                              if (e) {
                                attempt->fulfiller->reject(disconnected("connect", e.value()));
                                return;
                              }
                              asio::error_code ignored;
                              attempt->socket.set_option(asio::ip::tcp::no_delay(true), ignored);
                              attempt->socket.non_blocking(true, ignored);
                              attempt->fulfiller->fulfill(attempt->socket.release());
                            });
      });
  Impl* impl = impl_.get();
  return paf.promise
      .then([impl](int fd) -> kj::Own<kj::AsyncIoStream> {
        return kj::heap<AsioStream>(impl->io, fd);
      })
      .attach(kj::defer([attempt] {  // dropped before it finished: give the attempt up
        asio::error_code ignored;
        attempt->resolver.cancel();
        attempt->socket.close(ignored);
      }));
}

CrossThreadSignal crossThreadSignal() {
  KjOnAsio::Impl* impl = tl_current;
  if (impl == nullptr) {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    auto fulfiller =
        std::make_shared<kj::Own<kj::CrossThreadPromiseFulfiller<void>>>(kj::mv(paf.fulfiller));
    return {kj::mv(paf.promise), [fulfiller] { (*fulfiller)->fulfill(); }};
  }
  // The fulfiller is touched, and released, only on the loop's thread: a handler posted there
  // holds the last reference. If the io_context goes first, the handler goes with it unrun.
  auto paf = kj::newPromiseAndFulfiller<void>();
  auto fulfiller = std::make_shared<kj::Own<kj::PromiseFulfiller<void>>>(kj::mv(paf.fulfiller));
  asio::io_context* io = &impl->io;
  return {kj::mv(paf.promise), [impl, io, fulfiller]() mutable {
            if (tl_current == impl) {
              (*fulfiller)->fulfill();
              return;
            }
            asio::post(*io, [f = std::move(fulfiller)] { (*f)->fulfill(); });
          }};
}

void KjOnAsio::settle(bool last) {
  if (last) impl_->stopped = true;
  impl_->advance();
  while (impl_->loop.isRunnable()) impl_->loop.run();
  if (last) {
    ++impl_->arm_generation;
    asio::error_code ignored;
    impl_->wakeup.cancel();
    impl_->armed = false;
  }
}

}  // namespace throttlex
