// Connection's http-parser callbacks: building the request and enforcing the request limits.
//
// A callback that rejects the request records the status in error_status_ and returns non-zero;
// http-parser then stops with an HPE_CB_* error and Connection::execute() answers with it.
#include <algorithm>
#include <string>

#include "daemon/http/http_server_internal.h"

namespace throttlex::http_internal {

namespace {

constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";

char toLower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool equalsIgnoreCase(std::string_view a, std::string_view lower) {
  if (a.size() != lower.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (toLower(a[i]) != lower[i]) return false;
  }
  return true;
}

void trimTrailingSpace(std::string& s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.pop_back();
}

}  // namespace

const http_parser_settings& Connection::parserSettings() {
  static const http_parser_settings settings = [] {
    http_parser_settings s;
    http_parser_settings_init(&s);
    s.on_message_begin = [](http_parser* p) { return of(p).onMessageBegin(); };
    s.on_url = [](http_parser* p, const char* at, std::size_t n) { return of(p).onUrl(at, n); };
    s.on_header_field = [](http_parser* p, const char* at, std::size_t n) {
      return of(p).onHeaderField(at, n);
    };
    s.on_header_value = [](http_parser* p, const char* at, std::size_t n) {
      return of(p).onHeaderValue(at, n);
    };
    s.on_headers_complete = [](http_parser* p) { return of(p).onHeadersComplete(); };
    s.on_body = [](http_parser* p, const char* at, std::size_t n) { return of(p).onBody(at, n); };
    s.on_message_complete = [](http_parser* p) { return of(p).onMessageComplete(); };
    return s;
  }();
  return settings;
}

int Connection::reject(int status, std::string detail) {
  error_status_ = status;
  error_detail_ = std::move(detail);
  return -1;
}

int Connection::onMessageBegin() {
  request_.method.clear();
  request_.target.clear();
  request_.path.clear();
  request_.query.clear();
  request_.headers.clear();
  request_.body.clear();
  releaseIfLarge(request_.body);
  request_.keep_alive = true;
  error_status_ = 0;
  last_was_value_ = false;
  counting_ = true;
  header_bytes_ = 0;
  span_start_ = last_token_end_ = chunk_begin_;
  setPhase(Phase::kReceiving, options_.request_timeout);
  return 0;
}

// The request line and headers are limited to max_header_bytes as they arrive, whatever their
// split across reads: bytes counted in earlier execute() calls plus the span of this call up to
// the end of the current token (whitespace between tokens included).
bool Connection::countHeaderBytes(const char* at, std::size_t len) {
  last_token_end_ = at + len;
  const auto seen = header_bytes_ + static_cast<std::size_t>(last_token_end_ - span_start_);
  if (seen <= options_.max_header_bytes) return true;
  reject(431, "the request line and headers are larger than " +
                  std::to_string(options_.max_header_bytes) + " bytes");
  return false;
}

int Connection::onUrl(const char* at, std::size_t len) {
  if (!countHeaderBytes(at, len)) return -1;
  request_.target.append(at, len);
  return 0;
}

int Connection::onHeaderField(const char* at, std::size_t len) {
  if (!counting_) {  // trailer fields after a chunked body count like headers
    counting_ = true;
    span_start_ = at;
  }
  if (!countHeaderBytes(at, len)) return -1;
  if (request_.headers.empty() || last_was_value_) {
    if (request_.headers.size() >= options_.max_headers) {
      return reject(431, "more than " + std::to_string(options_.max_headers) + " header fields");
    }
    request_.headers.emplace_back();
    last_was_value_ = false;
  }
  std::string& name = request_.headers.back().first;
  for (std::size_t i = 0; i < len; ++i) {
    // http-parser accepts "Name :"; RFC 9112 §5.1 requires a 400 (it is a smuggling vector).
    if (at[i] == ' ' || at[i] == '\t') return reject(400, "whitespace in a header field name");
    name += toLower(at[i]);
  }
  return 0;
}

int Connection::onHeaderValue(const char* at, std::size_t len) {
  if (!countHeaderBytes(at, len)) return -1;
  request_.headers.back().second.append(at, len);
  last_was_value_ = true;
  return 0;
}

int Connection::onHeadersComplete() {
  header_bytes_ += static_cast<std::size_t>(last_token_end_ - span_start_);
  counting_ = false;
  if (parser_.http_major != 1) return reject(505, "only HTTP/1.0 and HTTP/1.1 are supported");
  const auto method = static_cast<http_method>(parser_.method);
  request_.method = http_method_str(method);
  head_ = method == HTTP_HEAD;
  http10_ = parser_.http_minor == 0;
  keep_alive_ = http_should_keep_alive(&parser_) != 0;
  if (parser_.upgrade != 0) {
    return reject(501, method == HTTP_CONNECT ? "CONNECT is not supported"
                                              : "protocol upgrades are not supported");
  }
  return checkHeaders();
}

// Transfer-Encoding, Content-Length and Expect: what the parser leaves to us.
int Connection::checkHeaders() {
  const std::string* expect = nullptr;
  for (auto& [name, value] : request_.headers) {
    trimTrailingSpace(
        value);  // http-parser keeps trailing whitespace (RFC 9110 §5.5: not part of it)
    if (name == "transfer-encoding") {
      if (equalsIgnoreCase(value, "chunked")) continue;
      // RFC 9112 §6.3: chunked not last is a 400; a coding we cannot decode is a 501.
      if ((parser_.flags & F_CHUNKED) == 0) {
        return reject(400, "chunked must be the final transfer coding");
      }
      return reject(501, "transfer codings other than chunked are not supported");
    }
    if (name == "expect") expect = &value;
  }
  const bool has_length = (parser_.flags & F_CONTENTLENGTH) != 0;
  if (has_length && parser_.content_length > options_.max_body_bytes) {
    return reject(413,
                  "the body is larger than " + std::to_string(options_.max_body_bytes) + " bytes");
  }
  // Reserve what is announced, up to a point: announcing is free, memory is not.
  if (has_length) {
    request_.body.reserve(std::min<std::size_t>(parser_.content_length, kMaxKeptCapacity));
  }
  if (expect != nullptr) {
    if (!equalsIgnoreCase(*expect, "100-continue")) return reject(417, "unsupported expectation");
    const bool body_follows =
        (parser_.flags & F_CHUNKED) != 0 || (has_length && parser_.content_length > 0);
    if (body_follows && !http10_) out_ += kContinue;  // pump() flushes it before reading the body
  }
  return 0;
}

int Connection::onBody(const char* at, std::size_t len) {
  if (request_.body.size() + len > options_.max_body_bytes) {
    return reject(413,
                  "the body is larger than " + std::to_string(options_.max_body_bytes) + " bytes");
  }
  request_.body.append(at, len);
  return 0;
}

int Connection::onMessageComplete() {
  if (counting_) {  // trailers
    header_bytes_ += static_cast<std::size_t>(last_token_end_ - span_start_);
    counting_ = false;
  }
  keep_alive_ = http_should_keep_alive(&parser_) != 0;
  request_.keep_alive = keep_alive_;
  http_parser_pause(&parser_, 1);  // one request at a time; execute() hands it to the handler
  return 0;
}

}  // namespace throttlex::http_internal
