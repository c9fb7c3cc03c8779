// A small HTTP/1.1 server on Asio with the Node.js http-parser: keep-alive, pipelining (answered in
// order), bounded request size, header count and idle time. It knows nothing of rate limiting;
// routes live in the handler (daemon/http/http_api.h).
//
// Threads: `threads` Asio io_contexts, one thread each, each with its own SO_REUSEPORT acceptor on
// the same port; a connection lives on one thread for its whole life, so connections need no locks.
// The handler runs on the connection's thread, must not block, and must call `respond` exactly once
// (possibly later, from any thread: the response is posted back to the connection's thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "limiter/clock.h"
#include "limiter/result.h"

namespace asio {
class io_context;
}

namespace throttlex {

// What one worker thread keeps besides its connections (the node's: a KJ loop and the thread's
// forwarder). Made on the thread before it serves, stop()ped on the thread when the server
// finishes (after the grace period), destroyed on the thread once its io_context ran dry.
class HttpThreadScope {
 public:
  virtual ~HttpThreadScope() = default;
  virtual void stop() {}
};
using HttpThreadScopeFactory = std::function<std::unique_ptr<HttpThreadScope>(asio::io_context&)>;

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // the request target as sent: "/v1/check?key=a"
  std::string path;    // target without the query: "/v1/check"
  std::string query;   // after '?', not decoded: "key=a"
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  bool keep_alive = true;

  // The first header with this (lower-case) name, or nullptr.
  const std::string* header(std::string_view lower_name) const;
};

struct HttpResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>>
      headers;  // Content-Length, Date, Connection are added
  std::string body;
  std::string content_type = "application/json";
};

// A problem+json (RFC 9457) error response: {"type","title","status","detail"}.
HttpResponse problemResponse(int status, std::string_view title, std::string_view detail);

using HttpRespond = std::function<void(HttpResponse)>;
using HttpHandler = std::function<void(HttpRequest&, HttpRespond)>;

struct HttpServerOptions {
  std::string bind_address = "0.0.0.0";
  std::uint16_t port = 8080;  // 0: pick a free port (see HttpServer::port())
  int threads = 1;
  std::size_t max_header_bytes = 16 * 1024;        // request line + headers; more: 431
  std::size_t max_headers = 64;                    // more: 431
  std::size_t max_body_bytes = 1024 * 1024;        // more: 413
  std::chrono::milliseconds idle_timeout{60'000};  // keep-alive connection with no request: closed
  std::chrono::milliseconds request_timeout{10'000};  // a request must arrive whole within this
  std::size_t max_connections = 10'000;  // per server; more are accepted and closed at once
  HttpThreadScopeFactory thread_scope;   // optional
};

class HttpServer {
 public:
  // Binds and listens (errors: address in use, bad address) and starts the threads. `clock`
  // (timeouts on its monotonic reading, the Date header on its wall one) must outlive the server.
  static Result<std::unique_ptr<HttpServer>> start(const HttpServerOptions& options,
                                                   const Clock& clock, HttpHandler handler);
  ~HttpServer();  // stop()s

  std::uint16_t port() const;  // the bound port
  // Stops accepting, lets in-flight requests finish (up to `grace`), closes connections, joins
  // the threads. Idempotent.
  void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(2000));

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace throttlex
