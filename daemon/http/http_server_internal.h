// Private to the HTTP server (daemon/http_server*.cc); nothing else includes this.
//
// Ownership and threads:
//   HttpServer::Impl owns the Workers (one per thread).
//   A Worker owns its io_context, acceptor and sweep timer, and lists its Connections (raw
//   pointers, used on its own thread only).
//   A Connection is kept alive by `self_` from accept until close(), and by the completion handlers
//   of its pending operations. Only its worker's thread creates or drops strong references, so
//   every Connection is destroyed on that thread (or, after the thread is joined, by ~io_context).
//   The `respond` given to the handler holds a Responder (a weak_ptr and the worker's Inbox), so it
//   may outlive the connection, the worker and the server: it then does nothing.
#pragma once

#include <http_parser.h>

#include <asio.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "daemon/http/http_server.h"
#include "limiter/mutex.h"

namespace throttlex::http_internal {

using asio::ip::tcp;

class Connection;

// State shared by all workers of one server.
struct ServerShared {
  // Constant after start.
  HttpServerOptions options;
  const Clock* clock = nullptr;  // never null
  HttpHandler handler;
  std::chrono::milliseconds sweep_interval{0};  // how often each worker checks its deadlines

  std::atomic<std::size_t> connections{0};  // open connections over all workers

  // stop() waits on `drained` (with `drain_mutex`) for `connections` to reach 0.
  Mutex drain_mutex;
  std::condition_variable drained;

  bool tryAddConnection();  // false when max_connections are open
  void connectionClosed();
};

// The one part of a worker that other threads may touch: posting a response back to it.
class Inbox {
 public:
  explicit Inbox(asio::io_context& io) : io_(&io) {}

  // True on the worker's own thread (set by Worker::run); no lock, no dereference.
  bool onOwnThread() const { return current_ == this; }

  // Runs `fn` on the worker's thread; dropped once the worker has stopped.
  template <typename Fn>
  void post(Fn&& fn) {
    MutexLock lock(mutex_);
    if (io_ != nullptr) asio::post(*io_, std::forward<Fn>(fn));
  }
  void close() {
    MutexLock lock(mutex_);
    io_ = nullptr;
  }

 private:
  friend class Worker;
  static inline thread_local const Inbox* current_ = nullptr;

  Mutex mutex_;
  asio::io_context* io_ GUARDED_BY(mutex_);  // null after the worker thread ended
};

// One thread, one io_context, one SO_REUSEPORT acceptor, and the connections it accepted.
class Worker {
 public:
  explicit Worker(ServerShared& shared);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Before start(), on the starting thread.
  Status listen(const tcp::endpoint& endpoint);
  std::uint16_t boundPort() const;
  void start();  // starts the thread

  // From any thread.
  template <typename Fn>
  void post(Fn&& fn) {
    asio::post(io_, std::forward<Fn>(fn));
  }
  void join();  // after finish() was posted

  // On the worker's thread only.
  void beginDrain();  // stop accepting; close idle connections; later responses close
  void finish();      // close every connection and let the thread end
  void add(Connection* connection) { connections_.insert(connection); }
  void remove(Connection* connection);
  Instant now() const { return now_; }
  std::string_view dateLine() const { return date_line_; }  // "Date: ...\r\n"
  bool draining() const { return draining_; }
  ServerShared& shared() { return shared_; }
  const std::shared_ptr<Inbox>& inbox() const { return inbox_; }

 private:
  void run();
  void accept();
  void onAccept(const asio::error_code& ec, tcp::socket socket);
  void armSweep();
  void sweep();
  void refreshClock();
  template <typename Fn>
  void forEachConnection(Fn fn);

  ServerShared& shared_;

  // State below is used on the worker's thread only (before start(): on the starting thread).
  // Declared before io_ so that connections destroyed by ~io_context still find it.
  std::unordered_set<Connection*> connections_;
  std::vector<std::shared_ptr<Connection>> scratch_;  // reused by sweep and drain
  Instant now_;                                       // cached; refreshed every sweep
  std::time_t date_second_ = 0;
  std::string date_line_;
  bool draining_ = false;
  bool finishing_ = false;

  asio::io_context io_{1};
  std::unique_ptr<HttpThreadScope> scope_;  // made, stopped and destroyed on the thread
  std::shared_ptr<Inbox> inbox_;
  tcp::acceptor acceptor_;
  asio::steady_timer sweep_timer_;
  asio::steady_timer accept_retry_timer_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
};

// One accepted socket: parses requests with http-parser, hands them to the handler one at a time
// and writes the answers in request order. See http_server_connection.cc (I/O and state) and
// http_server_parser.cc (parser callbacks).
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Worker& worker, tcp::socket socket);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // All on the worker's thread; callers hold a shared_ptr (close() drops self_).
  void start();
  void deliver(std::uint64_t seq, HttpResponse&& response);
  bool expired(Instant now) const;
  void onExpired(Instant now);
  void onDrain();
  void close();

 private:
  enum class Phase {
    kIdle,       // between requests: idle_timeout
    kReceiving,  // a request has begun: request_timeout
    kBusy,       // the handler has it, or a final error answer is going out: no phase deadline
    kLinger,     // our side is shut down; discarding input until the peer closes or kLinger
  };

  static const http_parser_settings& parserSettings();
  static Connection& of(http_parser* parser) { return *static_cast<Connection*>(parser->data); }
  int onMessageBegin();
  int onUrl(const char* at, std::size_t len);
  int onHeaderField(const char* at, std::size_t len);
  int onHeaderValue(const char* at, std::size_t len);
  int onHeadersComplete();
  int onBody(const char* at, std::size_t len);
  int onMessageComplete();
  bool countHeaderBytes(const char* at, std::size_t len);
  int reject(int status, std::string detail);
  int checkHeaders();

  void pump();
  void consume(const char* data, std::size_t size);
  std::size_t execute(const char* data, std::size_t size);
  void dispatch();
  HttpRespond makeRespond(std::uint64_t seq);
  void fail(int status, std::string_view detail);
  void flush();
  void onWritten(const asio::error_code& ec);
  void finishClose();
  void startRead();
  void onRead(const asio::error_code& ec, std::size_t n);
  void onPeerGone();
  void setPhase(Phase phase, std::chrono::milliseconds timeout);

  Worker& worker_;
  const HttpServerOptions& options_;
  tcp::socket socket_;
  std::shared_ptr<Connection> self_;  // set by start(), dropped by close()
  http_parser parser_;

  // Buffers, reused for the connection's life.
  std::unique_ptr<char[]> read_buffer_;
  std::string pending_;         // received, not yet parsed (pipelined behind a busy request)
  std::string pending_swap_;    // pending_'s partner while it is being parsed
  std::string out_;             // responses not yet handed to the socket
  std::string writing_buffer_;  // the bytes of the async_write in flight

  // The request being parsed, then handled.
  HttpRequest request_;
  std::uint64_t seq_ = 0;  // of the request last handed to the handler
  int error_status_ = 0;   // set by a parser callback that rejects the request
  std::string error_detail_;
  bool head_ = false;
  bool http10_ = false;
  bool keep_alive_ = true;
  bool last_was_value_ = false;

  // Counting the request line and header bytes across execute() calls (see countHeaderBytes).
  bool counting_ = false;
  std::size_t header_bytes_ = 0;          // counted in earlier execute() calls
  const char* span_start_ = nullptr;      // where counting started in this call
  const char* last_token_end_ = nullptr;  // end of the last header token in this call
  const char* chunk_begin_ = nullptr;     // the data of this execute() call

  Phase phase_ = Phase::kIdle;
  Instant deadline_ = Instant::max();
  Instant write_deadline_ = Instant::max();
  std::size_t linger_bytes_ = 0;
  bool reading_ = false;
  bool writing_ = false;
  bool awaiting_ = false;    // the handler has the request and has not answered
  bool in_handler_ = false;  // inside the handler call (a synchronous answer must not re-enter)
  bool close_after_write_ = false;
  bool peer_closed_ = false;
  bool closed_ = false;
};

// Buffers are reused between requests, but one that an unusually large request or answer grew past
// this is given back, so idle connections stay small.
inline constexpr std::size_t kMaxKeptCapacity = 64 * 1024;

inline void releaseIfLarge(std::string& s) {
  if (s.capacity() > kMaxKeptCapacity) std::string().swap(s);
}

// http_server_wire.cc: serialising responses.
struct ResponseFraming {
  bool head = false;           // answer to HEAD: no body
  bool http10 = false;         // the client spoke HTTP/1.0: say keep-alive explicitly
  bool keep_alive = true;      // false: "Connection: close"
  std::string_view date_line;  // "Date: ...\r\n" or empty
};
void appendResponse(std::string& out, const HttpResponse& response, const ResponseFraming& framing);
std::string_view reasonPhrase(int status);
void formatDateLine(std::time_t t, std::string& out);

}  // namespace throttlex::http_internal
