// HttpServer: the workers (thread + io_context + SO_REUSEPORT acceptor each), accepting,
// deadlines and the graceful stop. Connections: http_server_connection.cc.
#include "daemon/http/http_server.h"

#include <sys/socket.h>

#include <algorithm>
#include <cassert>
#include <string>
#include <utility>

#include "daemon/http/http_server_internal.h"
#include "limiter/mutex.h"

namespace throttlex::http_internal {

namespace {

// After a failed accept (out of descriptors, most likely) wait before trying again instead of
// spinning on the same error.
constexpr std::chrono::milliseconds kAcceptRetry{50};

Status validate(const HttpServerOptions& o) {
  if (o.threads < 1 || o.threads > 1024) return invalidArgument("http threads must be in 1..1024");
  if (o.max_header_bytes < 64) return invalidArgument("http max_header_bytes must be at least 64");
  if (o.max_headers < 1) return invalidArgument("http max_headers must be at least 1");
  if (o.idle_timeout.count() <= 0 || o.request_timeout.count() <= 0) {
    return invalidArgument("http idle_timeout and request_timeout must be positive");
  }
  if (o.max_connections < 1) return invalidArgument("http max_connections must be at least 1");
  return Ok{};
}

Error listenError(const tcp::endpoint& endpoint, const asio::error_code& ec) {
  std::string where = endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
  return {ErrorCode::kUnavailable, "cannot listen on " + where + ": " + ec.message()};
}

}  // namespace

// ---- ServerShared ---------------------------------------------------------------------------

bool ServerShared::tryAddConnection() {
  if (connections.fetch_add(1, std::memory_order_relaxed) < options.max_connections) return true;
  connectionClosed();
  return false;
}

void ServerShared::connectionClosed() {
  if (connections.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    // Lock so that stop() cannot miss the wake-up between its check and its wait.
    MutexLock lock(drain_mutex);
    drained.notify_all();
  }
}

// ---- Worker ---------------------------------------------------------------------------------

Worker::Worker(ServerShared& shared)
    : shared_(shared),
      now_(shared.clock->monotonic()),
      inbox_(std::make_shared<Inbox>(io_)),
      acceptor_(io_),
      sweep_timer_(io_),
      accept_retry_timer_(io_) {
  refreshClock();
}

Worker::~Worker() {
  join();
}

Status Worker::listen(const tcp::endpoint& endpoint) {
  asio::error_code ec;
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) {
    // Every worker listens on the same port; the kernel spreads new connections over them.
    int one = 1;
    if (::setsockopt(acceptor_.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
      ec = asio::error_code(errno, asio::system_category());
    }
  }
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return listenError(endpoint, ec);
  return Ok{};
}

std::uint16_t Worker::boundPort() const {
  asio::error_code ec;
  return acceptor_.local_endpoint(ec).port();
}

void Worker::start() {
  work_.emplace(io_.get_executor());
  accept();
  armSweep();
  thread_ = std::thread([this] { run(); });
}

void Worker::run() {
  Inbox::current_ = inbox_.get();
  if (shared_.options.thread_scope) scope_ = shared_.options.thread_scope(io_);
  for (;;) {
    try {
      io_.run();
      scope_.reset();
      return;
    } catch (...) {
      // Only allocation failure can get here (handler exceptions are caught per request);
      // losing one event is better than losing the process.
    }
  }
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
  inbox_->close();
}

void Worker::accept() {
  acceptor_.async_accept(
      [this](const asio::error_code& ec, tcp::socket socket) { onAccept(ec, std::move(socket)); });
}

void Worker::onAccept(const asio::error_code& ec, tcp::socket socket) {
  if (draining_ || ec == asio::error::operation_aborted) return;
  if (ec) {
    accept_retry_timer_.expires_after(kAcceptRetry);
    accept_retry_timer_.async_wait([this](const asio::error_code& e) {
      if (!e && !draining_) accept();
    });
    return;
  }
  if (shared_.tryAddConnection()) {
    std::make_shared<Connection>(*this, std::move(socket))->start();
  }  // else: over max_connections; the socket closes as it goes out of scope
  accept();
}

void Worker::remove(Connection* connection) {
  connections_.erase(connection);
  shared_.connectionClosed();
}

template <typename Fn>
void Worker::forEachConnection(Fn fn) {
  // Closing a connection erases it from connections_: iterate over a copy of strong references.
  scratch_.clear();
  for (Connection* c : connections_) scratch_.push_back(c->shared_from_this());
  for (auto& c : scratch_) fn(*c);
  scratch_.clear();
}

// All connection deadlines are checked by one periodic timer per worker instead of a timer per
// connection: a request then costs no timer operations, and deadlines are late by at most one
// sweep interval (an eighth of the shortest timeout, see HttpServer::start).
void Worker::armSweep() {
  sweep_timer_.expires_after(shared_.sweep_interval);
  sweep_timer_.async_wait([this](const asio::error_code& ec) {
    if (ec || finishing_) return;
    sweep();
    armSweep();
  });
}

void Worker::sweep() {
  refreshClock();
  scratch_.clear();
  for (Connection* c : connections_) {
    if (c->expired(now_)) scratch_.push_back(c->shared_from_this());
  }
  for (auto& c : scratch_) c->onExpired(now_);
  scratch_.clear();
}

void Worker::refreshClock() {
  now_ = shared_.clock->monotonic();
  // The Date header is the one use of wall-clock time here.
  const std::time_t second = static_cast<std::time_t>(
      std::chrono::duration_cast<std::chrono::seconds>(shared_.clock->now().time_since_epoch())
          .count());
  if (second != date_second_) {
    date_second_ = second;
    formatDateLine(second, date_line_);
  }
}

void Worker::beginDrain() {
  draining_ = true;
  asio::error_code ec;
  acceptor_.close(ec);
  accept_retry_timer_.cancel();
  forEachConnection([](Connection& c) { c.onDrain(); });
}

void Worker::finish() {
  if (scope_) scope_->stop();
  finishing_ = true;
  draining_ = true;
  asio::error_code ec;
  acceptor_.close(ec);
  accept_retry_timer_.cancel();
  sweep_timer_.cancel();
  forEachConnection([](Connection& c) { c.close(); });
  work_.reset();  // run() returns once the aborted operations have completed
}

}  // namespace throttlex::http_internal

// ---- HttpServer -----------------------------------------------------------------------------

namespace throttlex {

using http_internal::listenError;
using http_internal::ServerShared;
using http_internal::tcp;
using http_internal::validate;
using http_internal::Worker;

struct HttpServer::Impl {
  ServerShared shared;
  std::vector<std::unique_ptr<Worker>> workers;  // constant after start
  std::uint16_t port = 0;

  Mutex stop_mutex;  // serialises stop()
  bool stopped GUARDED_BY(stop_mutex) = false;

  void stop(std::chrono::milliseconds grace);
};

Result<std::unique_ptr<HttpServer>> HttpServer::start(const HttpServerOptions& options,
                                                      const Clock& clock, HttpHandler handler) {
  if (Status s = validate(options); !s.ok()) return s.error();
  if (!handler) return invalidArgument("http handler is empty");
  asio::error_code ec;
  const asio::ip::address address = asio::ip::make_address(options.bind_address, ec);
  if (ec) return invalidArgument("bad http bind address '" + options.bind_address + "'");

  auto impl = std::make_unique<Impl>();
  impl->shared.options = options;
  impl->shared.clock = &clock;
  impl->shared.handler = std::move(handler);
  const auto shortest = std::min(options.idle_timeout, options.request_timeout);
  impl->shared.sweep_interval =
      std::clamp(shortest / 8, std::chrono::milliseconds(5), std::chrono::milliseconds(500));
  for (int i = 0; i < options.threads; ++i) {
    impl->workers.push_back(std::make_unique<Worker>(impl->shared));
  }

  tcp::endpoint endpoint(address, options.port);
  if (options.port != 0) {
    // SO_REUSEPORT would let us share the port with another process that also sets it (a second
    // daemon, say) instead of failing. A plain bind first tells "in use" apart.
    asio::io_context probe_io;
    tcp::acceptor probe(probe_io);
    probe.open(endpoint.protocol(), ec);
    if (!ec) probe.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) probe.bind(endpoint, ec);
    if (ec) return listenError(endpoint, ec);
  }
  for (auto& worker : impl->workers) {
    if (Status s = worker->listen(endpoint); !s.ok()) return s.error();
    endpoint.port(worker->boundPort());  // port 0: the others join the port the first one got
  }
  impl->port = endpoint.port();
  for (auto& worker : impl->workers) worker->start();
  // The constructor is private; make_unique cannot reach it.
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() {
  stop();
}

std::uint16_t HttpServer::port() const {
  return impl_->port;
}

void HttpServer::stop(std::chrono::milliseconds grace) {
  impl_->stop(grace);
}

// Must not be called from a handler (it joins the thread the handler runs on).
void HttpServer::Impl::stop(std::chrono::milliseconds grace) {
  for ([[maybe_unused]] auto& worker : workers) assert(!worker->inbox()->onOwnThread());
  MutexLock stop_lock(stop_mutex);
  if (stopped) return;
  stopped = true;
  for (auto& worker : workers) {
    worker->post([w = worker.get()] { w->beginDrain(); });
  }
  {
    MutexLock lock(shared.drain_mutex);
    shared.drained.wait_for(lock.native(), grace,
                            [this] { return shared.connections.load() == 0; });
  }
  for (auto& worker : workers) {
    worker->post([w = worker.get()] { w->finish(); });
  }
  for (auto& worker : workers) worker->join();
}

}  // namespace throttlex
