// One HTTP/1.1 connection: keep-alive, pipelining, limits, timeouts, errors.
//
// Order of answers: the parser is paused after every complete request, and nothing more is parsed
// until the handler has answered it, so answers leave in request order without a reorder queue.
// Answers given synchronously by the handler are batched: all requests that arrived in one read
// are answered with one write.
//
// Memory per connection is bounded: one read buffer, the request being parsed (max_header_bytes +
// max_body_bytes), input that arrived behind a busy request (at most one read buffer, because we do
// not read while the handler has a request), and queued output (parsing stops beyond
// kMaxQueuedOutput until the client reads).
//
// Parser callbacks: http_server_parser.cc.
#include <atomic>
#include <string>
#include <utility>

#include "daemon/http/http_server_internal.h"

namespace throttlex::http_internal {

namespace {

constexpr std::size_t kReadBufferBytes = 8 * 1024;
constexpr std::size_t kMaxQueuedOutput = 64 * 1024;
// After the last answer we shut down our side and keep reading (and discarding) for this long:
// closing a socket with unread input makes the kernel send RST, which can destroy the answer
// before the client reads it.
constexpr std::chrono::milliseconds kLinger{1000};
constexpr std::size_t kMaxLingerBytes = 1024 * 1024;

}  // namespace

Connection::Connection(Worker& worker, tcp::socket socket)
    : worker_(worker),
      options_(worker.shared().options),
      socket_(std::move(socket)),
      read_buffer_(std::make_unique<char[]>(kReadBufferBytes)) {
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
}

void Connection::start() {
  self_ = shared_from_this();
  worker_.add(this);
  asio::error_code ec;
  socket_.set_option(tcp::no_delay(true), ec);
  socket_.non_blocking(true, ec);  // flush() tries a plain send before falling back to async_write
  if (ec) return close();
  setPhase(Phase::kIdle, options_.idle_timeout);
  pump();
}

void Connection::close() {
  if (closed_) return;
  closed_ = true;
  asio::error_code ec;
  socket_.close(ec);  // pending read and write complete with operation_aborted
  worker_.remove(this);
  self_.reset();  // safe: every caller holds its own shared_ptr
}

void Connection::setPhase(Phase phase, std::chrono::milliseconds timeout) {
  phase_ = phase;
  deadline_ = timeout.count() > 0 ? worker_.now() + timeout : Instant::max();
}

// ---- Driving the connection -----------------------------------------------------------------

// Does whatever the state allows: parse input held back, write queued answers, read more.
void Connection::pump() {
  const bool backlogged = writing_ && out_.size() >= kMaxQueuedOutput;
  if (!closed_ && !pending_.empty() && !awaiting_ && !backlogged) {
    pending_swap_.swap(pending_);
    consume(pending_swap_.data(), pending_swap_.size());
    pending_swap_.clear();
    releaseIfLarge(pending_swap_);
  }
  if (closed_) return;
  flush();
  if (closed_) return;
  if (worker_.draining() && phase_ == Phase::kIdle && !writing_ && out_.empty() &&
      pending_.empty()) {
    return close();
  }
  if (!reading_ && !awaiting_ && !close_after_write_ && pending_.empty()) startRead();
}

void Connection::consume(const char* data, std::size_t size) {
  std::size_t offset = 0;
  while (offset < size) {
    if (out_.size() >= kMaxQueuedOutput) flush();
    if (closed_ || close_after_write_) return;  // whatever follows is discarded
    if (awaiting_ || (writing_ && out_.size() >= kMaxQueuedOutput)) {
      pending_.append(data + offset, size - offset);
      return;
    }
    offset += execute(data + offset, size - offset);
  }
}

// One http_parser_execute() call; returns the bytes it used up.
std::size_t Connection::execute(const char* data, std::size_t size) {
  chunk_begin_ = data;
  if (counting_) span_start_ = last_token_end_ = data;
  const std::size_t used = http_parser_execute(&parser_, &parserSettings(), data, size);
  const http_errno err = HTTP_PARSER_ERRNO(&parser_);
  if (err == HPE_PAUSED) {  // onMessageComplete paused it: one whole request
    http_parser_pause(&parser_, 0);
    dispatch();
    return used;
  }
  if (err != HPE_OK) {
    if (error_status_ != 0) {
      fail(error_status_, error_detail_);
    } else if (err == HPE_HEADER_OVERFLOW) {
      fail(431, "the request line and headers are too large");
    } else {
      fail(400, http_errno_description(err));
    }
    return size;
  }
  if (counting_) {
    header_bytes_ += static_cast<std::size_t>(data + used - span_start_);
    if (header_bytes_ > options_.max_header_bytes) {
      fail(431, "the request line and headers are larger than " +
                    std::to_string(options_.max_header_bytes) + " bytes");
      return size;
    }
  }
  if (used != size) {  // http-parser stops early only on errors, pauses and upgrades (refused)
    fail(400, "unexpected parser state");
    return size;
  }
  return used;
}

void Connection::dispatch() {
  const std::string& target = request_.target;
  const std::size_t q = target.find('?');
  if (!target.empty() && target[0] == '/') {
    request_.path.assign(target, 0, q);
    if (q != std::string::npos) request_.query.assign(target, q + 1);
  } else {  // absolute-form ("http://host/p?q") or "*"
    http_parser_url url;
    http_parser_url_init(&url);
    if (http_parser_parse_url(target.data(), target.size(), 0, &url) == 0 &&
        (url.field_set & (1 << UF_PATH)) != 0) {
      request_.path.assign(target, url.field_data[UF_PATH].off, url.field_data[UF_PATH].len);
      if ((url.field_set & (1 << UF_QUERY)) != 0) {
        request_.query.assign(target, url.field_data[UF_QUERY].off, url.field_data[UF_QUERY].len);
      }
    } else {
      request_.path = target;
    }
  }

  awaiting_ = true;
  setPhase(Phase::kBusy, std::chrono::milliseconds(0));
  const std::uint64_t seq = ++seq_;
  in_handler_ = true;
  try {
    worker_.shared().handler(request_, makeRespond(seq));
  } catch (...) {  // handlers must not throw; if one does, its client still gets an answer
    deliver(seq, problemResponse(500, "Internal Server Error", "the request handler failed"));
  }
  in_handler_ = false;
}

namespace {

// The answer slot inside `respond`, shared by all copies of it. The first call sends its answer;
// later calls do nothing. If the last copy goes away unanswered (a handler bug), the client gets a
// 500 instead of a connection that waits forever. Any thread may call or drop it; it may outlive
// the connection and the server, and then does nothing.
class Responder {
 public:
  Responder(std::weak_ptr<Connection> connection, std::shared_ptr<Inbox> inbox, std::uint64_t seq)
      : connection_(std::move(connection)), inbox_(std::move(inbox)), seq_(seq) {}
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;
  ~Responder() {
    if (!answered_.exchange(true)) {
      send(problemResponse(500, "Internal Server Error", "the request handler did not answer"));
    }
  }

  void answer(HttpResponse&& response) {
    if (!answered_.exchange(true)) send(std::move(response));
  }

 private:
  void send(HttpResponse&& response) {
    if (inbox_->onOwnThread()) {
      if (auto c = connection_.lock()) c->deliver(seq_, std::move(response));
      return;
    }
    inbox_->post([connection = connection_, seq = seq_, r = std::move(response)]() mutable {
      if (auto c = connection.lock()) c->deliver(seq, std::move(r));
    });
  }

  const std::weak_ptr<Connection> connection_;
  const std::shared_ptr<Inbox> inbox_;
  const std::uint64_t seq_;
  std::atomic<bool> answered_{false};
};

}  // namespace

HttpRespond Connection::makeRespond(std::uint64_t seq) {
  auto responder = std::make_shared<Responder>(weak_from_this(), worker_.inbox(), seq);
  return [responder = std::move(responder)](HttpResponse response) {
    responder->answer(std::move(response));
  };
}

void Connection::deliver(std::uint64_t seq, HttpResponse&& response) {
  if (closed_ || !awaiting_ || seq != seq_) return;  // answered twice, or too late
  awaiting_ = false;
  const bool keep_alive = keep_alive_ && !worker_.draining();
  appendResponse(out_, response, {head_, http10_, keep_alive, worker_.dateLine()});
  if (!keep_alive) close_after_write_ = true;
  setPhase(Phase::kIdle, options_.idle_timeout);
  if (!in_handler_) pump();  // else consume() goes on with the next pipelined request
}

// Answers with a problem and closes: after a parse error the byte stream cannot be trusted.
void Connection::fail(int status, std::string_view detail) {
  if (closed_ || close_after_write_) return;
  appendResponse(out_, problemResponse(status, reasonPhrase(status), detail),
                 {false, false, false, worker_.dateLine()});
  close_after_write_ = true;
  setPhase(Phase::kBusy, std::chrono::milliseconds(0));
  flush();
}

// ---- Writing --------------------------------------------------------------------------------

void Connection::flush() {
  if (writing_ || closed_) return;
  if (!out_.empty()) {
    // Most answers fit the socket buffer: one plain send, no completion handler.
    asio::error_code ec;
    std::size_t n = socket_.write_some(asio::buffer(out_), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      n = 0;
    } else if (ec) {
      return close();
    }
    if (n < out_.size()) {
      writing_buffer_.swap(out_);
      out_.clear();
      writing_ = true;
      write_deadline_ = worker_.now() + options_.request_timeout;
      asio::async_write(socket_,
                        asio::buffer(writing_buffer_.data() + n, writing_buffer_.size() - n),
                        [self = shared_from_this()](const asio::error_code& e, std::size_t) {
                          self->onWritten(e);
                        });
      return;
    }
    out_.clear();
    releaseIfLarge(out_);
  }
  if (close_after_write_) finishClose();
}

void Connection::onWritten(const asio::error_code& ec) {
  writing_ = false;
  writing_buffer_.clear();
  releaseIfLarge(writing_buffer_);
  write_deadline_ = Instant::max();
  if (closed_) return;
  if (ec) return close();
  pump();
}

void Connection::finishClose() {
  if (phase_ == Phase::kLinger) return;
  if (peer_closed_ || worker_.draining()) return close();
  asio::error_code ec;
  socket_.shutdown(tcp::socket::shutdown_send, ec);
  if (ec) return close();
  setPhase(Phase::kLinger, kLinger);
  if (!reading_) startRead();
}

// ---- Reading --------------------------------------------------------------------------------

void Connection::startRead() {
  reading_ = true;
  socket_.async_read_some(asio::buffer(read_buffer_.get(), kReadBufferBytes),
                          [self = shared_from_this()](const asio::error_code& ec, std::size_t n) {
                            self->onRead(ec, n);
                          });
}

void Connection::onRead(const asio::error_code& ec, std::size_t n) {
  reading_ = false;
  if (closed_) return;
  if (phase_ == Phase::kLinger) {
    linger_bytes_ += n;
    if (ec || linger_bytes_ > kMaxLingerBytes) return close();
    return startRead();
  }
  if (ec) return onPeerGone();
  consume(read_buffer_.get(), n);
  pump();
}

// EOF or a reset. A half-closed client may still read: finish the answers already queued.
void Connection::onPeerGone() {
  peer_closed_ = true;
  if (!writing_ && out_.empty()) return close();
  close_after_write_ = true;
  flush();
}

// ---- Timers and stopping (called by the worker's sweep and drain) ----------------------------

bool Connection::expired(Instant now) const {
  return !closed_ && (now >= deadline_ || (writing_ && now >= write_deadline_));
}

void Connection::onExpired(Instant now) {
  if (closed_) return;
  if (writing_ && now >= write_deadline_) return close();  // the client does not read
  if (now < deadline_) return;
  switch (phase_) {
    case Phase::kReceiving:
      fail(408, "the request did not arrive within " +
                    std::to_string(options_.request_timeout.count()) + " ms");
      return;
    case Phase::kIdle:
    case Phase::kLinger:
      return close();
    case Phase::kBusy:
      return;
  }
}

void Connection::onDrain() {
  if (phase_ == Phase::kLinger) return close();
  if (phase_ == Phase::kIdle && !writing_ && out_.empty() && pending_.empty()) close();
  // Otherwise a request is in flight: its answer will carry "Connection: close".
}

}  // namespace throttlex::http_internal
