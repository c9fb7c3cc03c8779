// Serialising responses, problem+json bodies and the request accessors.
#include <charconv>
#include <cstdio>
#include <string>
#include <string_view>

#include "daemon/http/http_server.h"
#include "daemon/http/http_server_internal.h"

namespace throttlex {

namespace {

bool equalsLower(std::string_view name, std::string_view lower) {
  if (name.size() != lower.size()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != lower[i]) return false;
  }
  return true;
}

void appendJsonString(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x",
                        static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void appendNumber(std::string& out, std::uint64_t n) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, n);
  out.append(buf, static_cast<std::size_t>(end - buf));
}

// We frame the message ourselves; a handler's copy of these would contradict ours.
bool isFramingHeader(std::string_view name) {
  return equalsLower(name, "content-length") || equalsLower(name, "connection") ||
         equalsLower(name, "date") || equalsLower(name, "transfer-encoding") ||
         equalsLower(name, "content-type");
}

// CR or LF in a header would let a value smuggle in headers of its own.
bool isSafeHeaderText(std::string_view s) {
  return s.find_first_of("\r\n") == std::string_view::npos;
}

}  // namespace

const std::string* HttpRequest::header(std::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return &value;
  }
  return nullptr;
}

HttpResponse problemResponse(int status, std::string_view title, std::string_view detail) {
  HttpResponse r;
  r.status = status;
  r.content_type = "application/problem+json";
  r.body.reserve(64 + title.size() + detail.size());
  r.body += R"({"type":"about:blank","title":)";
  appendJsonString(r.body, title);
  r.body += R"(,"status":)";
  appendNumber(r.body, static_cast<std::uint64_t>(status < 0 ? 0 : status));
  r.body += R"(,"detail":)";
  appendJsonString(r.body, detail);
  r.body += "}";
  return r;
}

namespace http_internal {

std::string_view reasonPhrase(int status) {
  if (status < 100 || status > 599) return "Unknown";
  const char* s = http_status_str(static_cast<http_status>(status));
  if (s[0] == '<') return "Unknown";  // http-parser's "<unknown>"
  return s;
}

void formatDateLine(std::time_t t, std::string& out) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::size_t n = std::strftime(buf, sizeof buf, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
  out.assign(buf, n);
}

void appendResponse(std::string& out, const HttpResponse& response,
                    const ResponseFraming& framing) {
  // A handler's status outside 200..599 is a bug; the client still gets a well-formed answer.
  const int status = response.status >= 200 && response.status <= 599 ? response.status : 500;
  const bool no_content = status == 204 || status == 304;
  out += "HTTP/1.1 ";
  appendNumber(out, static_cast<std::uint64_t>(status));
  out += ' ';
  out += reasonPhrase(status);
  out += "\r\n";
  out += framing.date_line;
  for (const auto& [name, value] : response.headers) {
    if (name.empty() || isFramingHeader(name) || !isSafeHeaderText(name) ||
        !isSafeHeaderText(value)) {
      continue;
    }
    out += name;
    out += ": ";
    out += value;
    out += "\r\n";
  }
  if (!no_content) {
    if (!response.content_type.empty() && isSafeHeaderText(response.content_type)) {
      out += "Content-Type: ";
      out += response.content_type;
      out += "\r\n";
    }
    out += "Content-Length: ";
    appendNumber(out, response.body.size());
    out += "\r\n";
  }
  if (!framing.keep_alive) {
    out += "Connection: close\r\n";
  } else if (framing.http10) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
  if (!framing.head && !no_content) out += response.body;
}

}  // namespace http_internal
}  // namespace throttlex
