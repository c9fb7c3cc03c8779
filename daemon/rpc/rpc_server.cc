#include "daemon/rpc/rpc_server.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/async-unix.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <future>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "daemon/base/log.h"
#include "daemon/loop/kj_on_asio.h"
#include "daemon/routing/router.h"
#include "daemon/rpc/rpc_service.h"
#include "limiter/mutex.h"

namespace throttlex {
namespace {

std::string errnoText(int err) {
  return std::strerror(err);
}
std::string describe(const kj::Exception& e) {
  return e.getDescription().cStr();
}

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.release();
    }
    return *this;
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// A bound, listening, non-blocking TCP socket. With reuse_port, several sockets (one per thread)
// may bind the same port and the kernel spreads incoming connections over them.
Result<Fd> listenSocket(const std::string& address, std::uint16_t port, bool reuse_port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = ::getaddrinfo(address.c_str(), service.c_str(), &hints, &found); rc != 0) {
    return invalidArgument("bad RPC bind address '" + address + "': " + ::gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(found, &::freeaddrinfo);
  Fd fd(::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return Error{ErrorCode::kUnavailable, "socket(): " + errnoText(errno)};
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuse_port && ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    return Error{ErrorCode::kUnavailable, "SO_REUSEPORT: " + errnoText(errno)};
  }
  if (::bind(fd.get(), found->ai_addr, found->ai_addrlen) != 0) {
    return Error{ErrorCode::kUnavailable,
                 "cannot bind the RPC port " + address + ":" + service + ": " + errnoText(errno)};
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) {
    return Error{ErrorCode::kUnavailable, "listen(): " + errnoText(errno)};
  }
  return fd;
}

Result<std::uint16_t> boundPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return Error{ErrorCode::kInternal, "getsockname(): " + errnoText(errno)};
  }
  if (addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"  // KJ's interface; never deleted through it
struct LogErrors final : kj::TaskSet::ErrorHandler {
  void taskFailed(kj::Exception&& e) override {
    // A connection that broke (client gone, unreadable message): nothing to do but note it.
    if (e.getType() != kj::Exception::Type::DISCONNECTED) logWarn("rpc connection: " + describe(e));
  }
};
#pragma GCC diagnostic pop

// Counts one open connection for max_connections.
class ConnectionSlot {
 public:
  explicit ConnectionSlot(std::atomic<std::size_t>& open) : open_(open) {}
  ~ConnectionSlot() { open_.fetch_sub(1, std::memory_order_relaxed); }
  ConnectionSlot(const ConnectionSlot&) = delete;
  ConnectionSlot& operator=(const ConnectionSlot&) = delete;

 private:
  std::atomic<std::size_t>& open_;
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"  // KJ's interface; never deleted through it
// A stream that remembers when it last delivered bytes (for the idle timeout).
class ActivityStream final : public kj::AsyncIoStream {
 public:
  ActivityStream(kj::Own<kj::AsyncIoStream> inner, kj::Timer& timer)
      : inner_(kj::mv(inner)), timer_(timer), last_(timer.now()) {}

  kj::TimePoint lastRead() const { return last_; }

  kj::Promise<size_t> tryRead(void* buffer, size_t min_bytes, size_t max_bytes) override {
    return inner_->tryRead(buffer, min_bytes, max_bytes).then([this](size_t n) {
      last_ = timer_.now();
      return n;
    });
  }
  kj::Promise<void> write(const void* buffer, size_t size) override {
    return inner_->write(buffer, size);
  }
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    return inner_->write(pieces);
  }
  kj::Promise<void> whenWriteDisconnected() override { return inner_->whenWriteDisconnected(); }
  void shutdownWrite() override { inner_->shutdownWrite(); }
  void abortRead() override { inner_->abortRead(); }
  void getsockopt(int level, int option, void* value, kj::uint* length) override {
    inner_->getsockopt(level, option, value, length);
  }
  void setsockopt(int level, int option, const void* value, kj::uint length) override {
    inner_->setsockopt(level, option, value, length);
  }
  void getsockname(struct sockaddr* addr, kj::uint* length) override {
    inner_->getsockname(addr, length);
  }
  void getpeername(struct sockaddr* addr, kj::uint* length) override {
    inner_->getpeername(addr, length);
  }
  kj::Maybe<int> getFd() const override { return inner_->getFd(); }

 private:
  kj::Own<kj::AsyncIoStream> inner_;
  kj::Timer& timer_;
  kj::TimePoint last_;
};
#pragma GCC diagnostic pop

// Resolves once `stream` has delivered nothing for `timeout` (checked at most every timeout / 4).
kj::Promise<void> whenIdle(const ActivityStream& stream, kj::Timer& timer, kj::Duration timeout) {
  const kj::Duration quiet = timer.now() - stream.lastRead();
  if (quiet >= timeout) return kj::READY_NOW;
  return timer.afterDelay(std::max(timeout - quiet, timeout / 4)).then([&stream, &timer, timeout] {
    return whenIdle(stream, timer, timeout);
  });
}

// One accepted connection. Member order is destruction order reversed: the RPC system goes
// before the network, which goes before the stream.
struct Connection {
  ConnectionSlot slot;
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;

  Connection(std::atomic<std::size_t>& open, kj::Own<kj::AsyncIoStream> s,
             capnp::Capability::Client bootstrap, capnp::ReaderOptions options,
             std::size_t flow_limit_words)
      : slot(open),
        stream(kj::mv(s)),
        network(*stream, capnp::rpc::twoparty::Side::SERVER, options),
        rpc(capnp::makeRpcServer(network, kj::mv(bootstrap))) {
    rpc.setFlowLimit(flow_limit_words);
  }
};

}  // namespace

// One listen socket and the thread that serves it (its own, or a host's).
struct Worker {
  Fd listen_fd;  // handed to the serving thread's event loop, which then owns it
  Fd stop_fd;    // eventfd: written once by stop(); not hosted only
  std::thread thread;
  RpcCounters counters;
  // False once this thread's accept loop failed for good (connections it has are still served
  // until stop()): RpcServer::listening(), and so /readyz, say so.
  std::atomic<bool> accepting{true};
};

struct RpcServer::Impl {
  // Constant after start().
  RpcServerOptions options;
  std::unique_ptr<Router> own_router;  // when started with a LimiterService only
  Router& router;
  NodeInfoProvider info;
  Metrics* metrics;
  std::uint16_t port = 0;
  capnp::ReaderOptions reader_options;
  std::vector<std::unique_ptr<Worker>> workers;
  std::atomic<std::size_t> hosted_workers{0};  // hosted: the workers host() has given out

  std::atomic<std::size_t> open_connections{0};
  std::atomic<std::uint64_t> rejected_connections{0};
  std::atomic<std::uint64_t> tls_refused{0};
  std::atomic<std::uint64_t> plain_accepted{0};
  std::atomic<std::uint64_t> idle_closed{0};

  Mutex stop_mu;
  bool stopped GUARDED_BY(stop_mu) = false;
  Impl(const RpcServerOptions& o, std::unique_ptr<Router> own, Router& r, NodeInfoProvider i,
       Metrics* m)
      : options(o), own_router(std::move(own)), router(r), info(std::move(i)), metrics(m) {
    reader_options = o.readerOptions();
  }

  void run(Worker& worker, std::promise<void>& ready);
};

namespace {

// A connection's capability, made for the role its certificate grants (kAdmin without TLS).
using ServiceFactory = std::function<capnp::Capability::Client(proto::Role)>;

class Acceptor {
 public:
  // `tls` null: plain TCP.
  Acceptor(RpcServer::Impl& server, kj::ConnectionReceiver& listener, kj::Timer& timer,
           proto::TlsContextCache* tls, ServiceFactory services, kj::TaskSet& connections)
      : server_(server),
        listener_(listener),
        timer_(timer),
        tls_(tls),
        services_(std::move(services)),
        plain_(tls == nullptr || !server.options.tls_required ? services_(proto::Role::kAdmin)
                                                              : nullptr),
        connections_(connections) {}

  // KJ's accept() makes the accept syscall at once and throws its failure (EMFILE) from the
  // call itself, not through the promise: that is caught here and retried like a rejection.
  // (Not with kj::evalNow: the broken promise it makes trips UBSan's vptr check across KJ.)
  kj::Promise<void> loop() {
    if (tls_ != nullptr) {
      kj::Maybe<kj::Promise<kj::AuthenticatedStream>> next;
      KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { next = listener_.acceptAuthenticated(); })) {
        return retry(kj::mv(*e));
      }
      return KJ_ASSERT_NONNULL(next).then(
          [this](kj::AuthenticatedStream stream) {
            handshake(kj::mv(stream));
            return loop();
          },
          [this](kj::Exception&& e) { return retry(kj::mv(e)); });
    }
    kj::Maybe<kj::Promise<kj::Own<kj::AsyncIoStream>>> next;
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { next = listener_.accept(); })) {
      return retry(kj::mv(*e));
    }
    return KJ_ASSERT_NONNULL(next).then(
        [this](kj::Own<kj::AsyncIoStream> stream) {
          enableKeepAlive(*stream);
          adopt(kj::mv(stream), plain_);
          return loop();
        },
        [this](kj::Exception&& e) { return retry(kj::mv(e)); });
  }

 private:
  // Out of file descriptors and the like: keep serving the connections we have and try again
  // shortly, instead of ending the accept loop.
  // Logged once, then at most every 10 s with a count (not 10 lines a second while descriptors
  // are exhausted).
  kj::Promise<void> retry(kj::Exception&& e) {
    ++unlogged_failures_;
    const kj::TimePoint now = timer_.now();
    if (!logged_once_ || now - last_logged_ >= 10 * kj::SECONDS) {
      logWarn("rpc accept failed" +
              (unlogged_failures_ > 1 ? " " + std::to_string(unlogged_failures_) + " times" : "") +
              ": " + describe(e) + " (retried every 100 ms)");
      logged_once_ = true;
      last_logged_ = now;
      unlogged_failures_ = 0;
    }
    return timer_.afterDelay(100 * kj::MILLISECONDS).then([this] { return loop(); });
  }

  // While TLS is optional, the first byte tells a TLS handshake from a plain connection, which
  // is served as without TLS.
  void handshake(kj::AuthenticatedStream stream) {
    enableKeepAlive(*stream.stream);
    if (server_.options.tls_required) return secure(kj::mv(stream));
    auto first = kj::heapArray<kj::byte>(1);
    auto read = stream.stream->tryRead(first.begin(), 1, 1);
    connections_.add(
        read.then([this, stream = kj::mv(stream), first = kj::mv(first)](size_t n) mutable {
          if (n == 0) return;  // closed before saying anything
          stream.stream = proto::putBack(kj::mv(stream.stream), first[0]);
          if (first[0] == proto::kTlsHandshakeByte) return secure(kj::mv(stream));
          server_.plain_accepted.fetch_add(1, std::memory_order_relaxed);
          adopt(kj::mv(stream.stream), plain_);
        }));
  }

  // The TLS handshake runs beside the accept loop (bounded by the context's accept timeout);
  // the certificate's common name gives the role.
  void secure(kj::AuthenticatedStream stream) {
    connections_.add(tls_->get()
                         ->wrapServer(kj::mv(stream))
                         .then([this](kj::AuthenticatedStream secured) {
                           auto& peer = kj::downcast<kj::TlsPeerIdentity>(*secured.peerIdentity);
                           auto role = proto::roleOf(peer.getCommonName().cStr());
                           if (!role) {
                             refuse(role.error().message);
                             return;
                           }
                           adopt(proto::coalesceWrites(kj::mv(secured.stream)), services_(*role));
                         })
                         .catch_([this](kj::Exception&& e) { refuse(describe(e)); }));
  }

  void refuse(const std::string& why) {
    server_.tls_refused.fetch_add(1, std::memory_order_relaxed);
    logWarn("rpc connection refused: " + why);
  }

  void adopt(kj::Own<kj::AsyncIoStream> stream, capnp::Capability::Client bootstrap) {
    const std::size_t open = server_.open_connections.fetch_add(1, std::memory_order_relaxed);
    if (open >= server_.options.max_connections) {
      server_.open_connections.fetch_sub(1, std::memory_order_relaxed);
      server_.rejected_connections.fetch_add(1, std::memory_order_relaxed);
      return;  // dropping the stream closes it
    }
    const auto timeout = server_.options.idle_timeout;
    ActivityStream* activity = nullptr;
    if (timeout.count() > 0) {
      auto watched = kj::heap<ActivityStream>(kj::mv(stream), timer_);
      activity = watched.get();
      stream = kj::mv(watched);
    }
    auto conn = kj::heap<Connection>(server_.open_connections, kj::mv(stream), kj::mv(bootstrap),
                                     server_.reader_options, server_.options.flow_limit_words);
    auto gone = conn->network.onDisconnect();
    if (activity != nullptr) {
      // Closed after `idle_timeout` without a message from the client (peers heartbeat every
      // 50 ms; the client library reopens a closed connection on its next call).
      gone = gone.exclusiveJoin(
          whenIdle(*activity, timer_, timeout.count() * kj::MILLISECONDS).then([this] {
            server_.idle_closed.fetch_add(1, std::memory_order_relaxed);
          }));
    }
    connections_.add(gone.attach(kj::mv(conn)));  // lives until the peer disconnects or idles
  }

  // A client host that vanishes (crash, a NAT dropping an idle flow) would otherwise hold its
  // connection slot forever: the server only ever answers, so it never notices. TCP keepalive
  // probes after 60 s idle, every 10 s, 6 times: such a connection closes within 2 minutes.
  static void enableKeepAlive(kj::AsyncIoStream& stream) {
    KJ_IF_MAYBE (fd, stream.getFd()) {
      const int on = 1, idle = 60, interval = 10, count = 6;
      ::setsockopt(*fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
      ::setsockopt(*fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
      ::setsockopt(*fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
      ::setsockopt(*fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    }
  }

  RpcServer::Impl& server_;
  kj::ConnectionReceiver& listener_;
  kj::Timer& timer_;
  proto::TlsContextCache* tls_;  // null without TLS; made again after a certificate reload
  ServiceFactory services_;
  capnp::Capability::Client plain_;  // without TLS: one capability for every connection
  kj::TaskSet& connections_;
  bool logged_once_ = false;
  kj::TimePoint last_logged_ = kj::origin<kj::TimePoint>();
  std::uint64_t unlogged_failures_ = 0;
};

// Resolves once stop_fd has been written.
kj::Promise<void> whenStopped(kj::UnixEventPort::FdObserver& observer, int stop_fd) {
  std::uint64_t value = 0;
  if (::read(stop_fd, &value, sizeof value) == static_cast<ssize_t>(sizeof value)) {
    return kj::READY_NOW;
  }
  return observer.whenBecomesReadable().then(
      [&observer, stop_fd] { return whenStopped(observer, stop_fd); });
}

}  // namespace

namespace {

// Serves one listen socket on the calling thread's KJ loop: the accept loop, TLS, and the
// connections, which close when this is destroyed. Failed accepts are retried inside the loop;
// anything else that ends it (an exception from setting up a connection) stops this socket's
// accepting, not the process.
class Serving {
 public:
  Serving(RpcServer::Impl& server, Worker& worker, kj::Own<kj::ConnectionReceiver> listener,
          kj::Timer& timer)
      : listener_(kj::mv(listener)),
        tls_(tlsOf(server, timer)),
        connections_(log_errors_),
        acceptor_(server, *listener_, timer, tls_.get(), services(server, worker), connections_),
        accepting_(acceptor_.loop()
                       .catch_([&worker](kj::Exception&& e) {
                         worker.accepting.store(false, std::memory_order_relaxed);
                         logError("rpc listener stopped accepting: " + describe(e) +
                                  " (/readyz answers 503)");
                       })
                       .eagerlyEvaluate(nullptr)) {}

  void stopAccepting() { accepting_ = kj::READY_NOW; }

 private:
  static kj::Own<proto::TlsContextCache> tlsOf(RpcServer::Impl& server, kj::Timer& timer) {
    if (!server.options.tls) return {};
    return kj::heap<proto::TlsContextCache>(server.options.tls, true, &timer);
  }

  static ServiceFactory services(RpcServer::Impl& server, Worker& worker) {
    return [&server, &worker](proto::Role role) -> capnp::Capability::Client {
      return kj::heap<RpcService>(server.router, server.info, server.metrics, worker.counters,
                                  server.options.control, role, server.options.adaptive,
                                  server.options.rules_sync);
    };
  }

  // Destroyed in reverse: the accept loop, then the connections, then TLS and the listener.
  LogErrors log_errors_;
  kj::Own<kj::ConnectionReceiver> listener_;
  kj::Own<proto::TlsContextCache> tls_;  // null without TLS
  kj::TaskSet connections_;
  Acceptor acceptor_;
  kj::Promise<void> accepting_;
};

// Hosted mode: a Serving on a host thread's loop (KjOnAsio).
class HostedServing final : public LoopService {
 public:
  HostedServing(RpcServer::Impl& server, Worker& worker, KjOnAsio& kj)
      : worker_(worker),
        serving_(server, worker, kj.listen(worker.listen_fd.release()), kj.timer()) {}
  // KJ's destructors may throw (noexcept(false)); these do not, and LoopService's may not.
  ~HostedServing() noexcept override {}  // NOLINT(modernize-use-equals-default)
  HostedServing(const HostedServing&) = delete;
  HostedServing& operator=(const HostedServing&) = delete;
  void stop() override {
    worker_.accepting.store(false, std::memory_order_relaxed);
    serving_.stopAccepting();
  }

 private:
  Worker& worker_;
  Serving serving_;
};

}  // namespace

void RpcServer::Impl::run(Worker& worker, std::promise<void>& ready) {
  auto io = kj::setupAsyncIo();
  auto listener = io.lowLevelProvider->wrapListenSocketFd(
      worker.listen_fd.release(), kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
                                      kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC |
                                      kj::LowLevelAsyncIoProvider::ALREADY_NONBLOCK);
  // Destroyed before stop_fd is closed (the Worker outlives this thread).
  kj::UnixEventPort::FdObserver stop_observer(io.unixEventPort, worker.stop_fd.get(),
                                              kj::UnixEventPort::FdObserver::OBSERVE_READ);
  Serving serving(*this, worker, kj::mv(listener), io.provider->getTimer());
  // This thread forwards the checks it receives itself, over connections of its own.
  std::unique_ptr<ForwarderThread> forwarding =
      router.attachThread(io.provider->getTimer(), connectorOf(io.provider->getNetwork()));
  ready.set_value();
  whenStopped(stop_observer, worker.stop_fd.get()).wait(io.waitScope);
  serving.stopAccepting();
  if (forwarding) {  // calls in flight come back cancelled and answer their checks (degraded)
    forwarding->shutdown();
    io.waitScope.poll();
  }
}

RpcServer::RpcServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RpcServer::~RpcServer() {
  stop();
}

Result<std::unique_ptr<RpcServer>> RpcServer::start(const RpcServerOptions& options,
                                                    LimiterService& service, NodeInfoProvider info,
                                                    Metrics* metrics) {
  auto router = std::make_unique<Router>(service, nullptr, nullptr);
  Router& r = *router;
  return start(options, r, std::move(info), metrics, std::move(router));
}

Result<std::unique_ptr<RpcServer>> RpcServer::start(const RpcServerOptions& options, Router& router,
                                                    NodeInfoProvider info, Metrics* metrics) {
  return start(options, router, std::move(info), metrics, nullptr);
}

Result<std::unique_ptr<RpcServer>> RpcServer::start(const RpcServerOptions& options, Router& router,
                                                    NodeInfoProvider info, Metrics* metrics,
                                                    std::unique_ptr<Router> own_router) {
  if (options.threads < 1) return invalidArgument("RPC threads must be at least 1");
  if (options.traversal_limit_words == 0 || options.nesting_limit < 1) {
    return invalidArgument("RPC traversal and nesting limits must be positive");
  }
  auto impl =
      std::make_unique<Impl>(options, std::move(own_router), router, std::move(info), metrics);

  // Bind every socket here, so that errors come back from start() and port 0 resolves to one port
  // shared by all threads.
  const bool reuse_port = options.threads > 1;
  std::uint16_t port = options.port;
  for (int i = 0; i < options.threads; ++i) {
    auto fd = listenSocket(options.bind_address, port, reuse_port);
    if (!fd) return fd.error();
    if (i == 0) {
      auto bound = boundPort(fd->get());
      if (!bound) return bound.error();
      port = *bound;
    }
    auto worker = std::make_unique<Worker>();
    worker->listen_fd = std::move(*fd);
    if (!options.hosted) {
      worker->stop_fd = Fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
      if (worker->stop_fd.get() < 0) {
        return Error{ErrorCode::kInternal, "eventfd(): " + errnoText(errno)};
      }
    }
    impl->workers.push_back(std::move(worker));
  }
  impl->port = port;

  auto server = std::unique_ptr<RpcServer>(new RpcServer(std::move(impl)));
  if (options.hosted) return server;
  for (auto& w : server->impl_->workers) {
    std::promise<void> ready;
    auto started = ready.get_future();
    Impl& self = *server->impl_;
    Worker& worker = *w;
    worker.thread = std::thread([&self, &worker, ready = std::move(ready)]() mutable {
      // A KJ exception here is a bug or resource exhaustion at start-up; report it, don't hang.
      KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { self.run(worker, ready); })) {
        logError("rpc thread failed: " + describe(*e));
        try {
          ready.set_exception(std::make_exception_ptr(std::runtime_error("rpc thread failed")));
        } catch (const std::future_error&) {
          // ready was already set: the loop failed later, the thread simply ends.
        }
      }
    });
    try {
      started.get();
    } catch (const std::runtime_error&) {
      server->stop();
      return Error{ErrorCode::kInternal, "an RPC thread failed to start (see the log)"};
    }
  }
  return server;
}

std::unique_ptr<LoopService> RpcServer::host(KjOnAsio& kj) {
  if (!impl_->options.hosted) return nullptr;
  const std::size_t i = impl_->hosted_workers.fetch_add(1, std::memory_order_relaxed);
  if (i >= impl_->workers.size()) return nullptr;
  return std::make_unique<HostedServing>(*impl_, *impl_->workers[i], kj);
}

std::uint16_t RpcServer::port() const {
  return impl_->port;
}

void RpcServer::stop() {
  MutexLock guard(impl_->stop_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  for (auto& w : impl_->workers) {
    const std::uint64_t one = 1;
    if (w->stop_fd.get() >= 0) {
      [[maybe_unused]] const ssize_t n = ::write(w->stop_fd.get(), &one, sizeof one);
    }
  }
  for (auto& w : impl_->workers) {
    if (w->thread.joinable()) w->thread.join();
  }
}

bool RpcServer::listening() const {
  {
    MutexLock guard(impl_->stop_mu);
    if (impl_->stopped) return false;
  }
  for (const auto& w : impl_->workers) {
    if (!w->accepting.load(std::memory_order_relaxed)) return false;
  }
  return true;
}

RpcServerStats RpcServer::stats() const {
  RpcServerStats s;
  for (const auto& w : impl_->workers) {
    s.calls += w->counters.calls.load(std::memory_order_relaxed);
    s.checks += w->counters.checks.load(std::memory_order_relaxed);
  }
  s.connections = impl_->open_connections.load(std::memory_order_relaxed);
  s.rejected_connections = impl_->rejected_connections.load(std::memory_order_relaxed);
  s.tls_refused = impl_->tls_refused.load(std::memory_order_relaxed);
  s.plain_accepted = impl_->plain_accepted.load(std::memory_order_relaxed);
  s.idle_closed = impl_->idle_closed.load(std::memory_order_relaxed);
  return s;
}

}  // namespace throttlex
