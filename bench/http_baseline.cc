// http_baseline: the floor that ThrottleX's HTTP front end is measured against.
//
// A trivial HTTP/1.1 server that answers every request with 200 and "{}", built like HttpServer
// (daemon/http/http_server.h) in everything but HTTP itself: N threads, an io_context and an
// SO_REUSEPORT acceptor per thread, TCP_NODELAY, an 8 KiB read buffer per connection, one plain
// send per batch of pipelined answers with async_write only for what does not fit. So
// `wrk` against this versus against the daemon's /v1/check measures the cost of parsing, routing
// and the limiter, not of a different I/O design. Target: /v1/check within 80% of this.
//
//   http_baseline [--port P] [--threads N] [--bind ADDR]     (Ctrl-C / SIGTERM stops it)
//
// Request framing is deliberately minimal (header block + Content-Length, Connection: close and
// HTTP/1.0); it trusts its client. Not for anything but benchmarks.
#include <sys/socket.h>

#include <asio.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using asio::ip::tcp;

constexpr std::size_t kReadBufferBytes = 8 * 1024;
constexpr std::size_t kMaxRequestBytes = 64 * 1024;
constexpr std::string_view kResponse =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
constexpr std::string_view kCloseResponse =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    "Connection: close\r\n\r\n{}";

// Case-insensitive search for a lower-case needle.
bool containsLower(std::string_view hay, std::string_view needle) {
  if (needle.size() > hay.size()) return false;
  for (std::size_t i = 0; i + needle.size() <= hay.size(); ++i) {
    std::size_t j = 0;
    while (j < needle.size()) {
      char c = hay[i + j];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      if (c != needle[j]) break;
      ++j;
    }
    if (j == needle.size()) return true;
  }
  return false;
}

std::size_t contentLength(std::string_view head) {
  for (std::size_t pos = head.find("\r\n"); pos != std::string_view::npos;
       pos = head.find("\r\n", pos + 2)) {
    std::string_view line = head.substr(pos + 2, head.find("\r\n", pos + 2) - pos - 2);
    if (line.size() > 15 && containsLower(line.substr(0, 15), "content-length:")) {
      return std::strtoul(std::string(line.substr(15)).c_str(), nullptr, 10);
    }
  }
  return 0;
}

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  explicit Connection(tcp::socket socket)
      : socket_(std::move(socket)), buffer_(std::make_unique<char[]>(kReadBufferBytes)) {}

  void start() {
    asio::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    socket_.non_blocking(true, ec);
    read();
  }

 private:
  void read() {
    socket_.async_read_some(asio::buffer(buffer_.get(), kReadBufferBytes),
                            [self = shared_from_this()](const asio::error_code& ec, std::size_t n) {
                              if (!ec) self->onData(n);
                            });
  }

  void onData(std::size_t n) {
    in_.append(buffer_.get(), n);
    std::size_t offset = 0;
    bool close = false;
    for (;;) {
      const std::size_t end = in_.find("\r\n\r\n", offset);
      if (end == std::string::npos) break;
      std::string_view head(in_.data() + offset, end - offset);
      const std::size_t total = end + 4 - offset + contentLength(head);
      if (in_.size() - offset < total) break;
      const bool http10 = head.find("HTTP/1.0\r\n") != std::string_view::npos;
      close = containsLower(head, "connection: close") ||
              (http10 && !containsLower(head, "connection: keep-alive"));
      out_ += close ? kCloseResponse : kResponse;
      offset += total;
      if (close) break;
    }
    in_.erase(0, offset);
    if (in_.size() > kMaxRequestBytes) return;  // drops the connection
    write(close);
  }

  void write(bool close) {
    asio::error_code ec;
    std::size_t n = out_.empty() ? 0 : socket_.write_some(asio::buffer(out_), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      n = 0;
    } else if (ec) {
      return;
    }
    if (n == out_.size()) {
      out_.clear();
      if (close) {
        socket_.shutdown(tcp::socket::shutdown_send, ec);
        return;
      }
      return read();
    }
    writing_.assign(out_, n);
    out_.clear();
    asio::async_write(socket_, asio::buffer(writing_),
                      [self = shared_from_this(), close](const asio::error_code& e, std::size_t) {
                        if (e) return;
                        asio::error_code ignored;
                        if (close) {
                          self->socket_.shutdown(tcp::socket::shutdown_send, ignored);
                          return;
                        }
                        self->read();
                      });
  }

  tcp::socket socket_;
  std::unique_ptr<char[]> buffer_;
  std::string in_;
  std::string out_;
  std::string writing_;
};

class Worker {
 public:
  Worker() : acceptor_(io_) {}

  bool listen(const tcp::endpoint& endpoint) {
    asio::error_code ec;
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    int one = 1;
    if (!ec &&
        ::setsockopt(acceptor_.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
      ec = asio::error_code(errno, asio::system_category());
    }
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) std::fprintf(stderr, "http_baseline: cannot listen: %s\n", ec.message().c_str());
    return !ec;
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  asio::io_context& io() { return io_; }

  void start() {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  void accept() {
    acceptor_.async_accept([this](const asio::error_code& ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) std::make_shared<Connection>(std::move(socket))->start();
      accept();
    });
  }

  asio::io_context io_{1};
  tcp::acceptor acceptor_;
  std::thread thread_;
};

int usage() {
  std::fprintf(stderr, "usage: http_baseline [--port P] [--threads N] [--bind ADDR]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string bind = "0.0.0.0";
  long port = 8080;
  long threads = 1;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (i + 1 >= argc) return usage();
    if (arg == "--port") {
      port = std::strtol(argv[++i], nullptr, 10);
    } else if (arg == "--threads") {
      threads = std::strtol(argv[++i], nullptr, 10);
    } else if (arg == "--bind") {
      bind = argv[++i];
    } else {
      return usage();
    }
  }
  if (port < 0 || port > 65535 || threads < 1 || threads > 1024) return usage();

  asio::error_code ec;
  tcp::endpoint endpoint(asio::ip::make_address(bind, ec), static_cast<std::uint16_t>(port));
  if (ec) return usage();
  if (port != 0) {
    // SO_REUSEPORT would quietly share the port with a stale instance; a plain bind tells.
    asio::io_context probe_io;
    tcp::acceptor probe(probe_io);
    probe.open(endpoint.protocol(), ec);
    if (!ec) probe.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) probe.bind(endpoint, ec);
    if (ec) {
      std::fprintf(stderr, "http_baseline: cannot listen on port %ld: %s\n", port,
                   ec.message().c_str());
      return 1;
    }
  }
  std::vector<std::unique_ptr<Worker>> workers;
  for (long i = 0; i < threads; ++i) {
    workers.push_back(std::make_unique<Worker>());
    if (!workers.back()->listen(endpoint)) return 1;
    endpoint.port(workers.back()->port());
  }

  asio::io_context signals_io;
  asio::signal_set signals(signals_io, SIGINT, SIGTERM);
  signals.async_wait([&](const asio::error_code&, int) {
    for (auto& w : workers) w->io().stop();
  });
  for (auto& w : workers) w->start();
  std::printf("http_baseline listening on %s:%u with %ld threads\n", bind.c_str(),
              static_cast<unsigned>(endpoint.port()), threads);
  std::fflush(stdout);
  signals_io.run();
  for (auto& w : workers) w->join();
  return 0;
}
