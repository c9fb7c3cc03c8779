// "host:port" and "[v6]:port" addresses, as nodes announce them and peers dial them. Shared by the
// gossip transport and the daemon's Asio-driven connections (daemon/loop/kj_on_asio.h).
#pragma once

#include <charconv>
#include <cstdint>
#include <string>

namespace throttlex::proto {

// Splits `address` into host (brackets of a v6 literal removed) and port 1..65535; false when
// malformed.
inline bool splitHostPort(const std::string& address, std::string& host, std::uint16_t& port) {
  const std::size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 >= address.size()) return false;
  host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  unsigned p = 0;
  const char* first = address.data() + colon + 1;
  const char* last = address.data() + address.size();
  const auto [end, ec] = std::from_chars(first, last, p);
  if (ec != std::errc() || end != last || p == 0 || p > 65535 || host.empty()) return false;
  port = static_cast<std::uint16_t>(p);
  return true;
}

}  // namespace throttlex::proto
