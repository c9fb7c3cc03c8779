// NetTransport (gossip/net_transport.h) on loopback: what a sender that never finishes its
// push/pull stream, or announces a huge one, can make a node hold. Waits are on sockets (the
// node closing a connection is seen as end of file), bounded by a receive timeout.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <asio.hpp>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "gossip/net_transport.h"

using namespace throttlex;
using namespace throttlex::gossip;

namespace {

constexpr std::size_t kMaxStream = 1 << 20;

// A NetTransport on 127.0.0.1, its io_context on a thread of its own.
struct Node {
  Node() {
    auto t = NetTransport::open(io, "127.0.0.1", 0, kMaxStream, [](Packet) {});
    REQUIRE(t.ok());
    transport = std::move(t).value();
    thread = std::thread([this] { io.run(); });
  }
  ~Node() {
    asio::post(io, [this] { transport->close(); });
    work.reset();
    io.stop();
    thread.join();
  }
  asio::io_context io;
  std::unique_ptr<NetTransport> transport;
  std::unique_ptr<asio::executor_work_guard<asio::io_context::executor_type>> work =
      std::make_unique<asio::executor_work_guard<asio::io_context::executor_type>>(
          io.get_executor());
  std::thread thread;
};

// A connected TCP socket to 127.0.0.1:port that has sent `bytes`; reads time out after 10 s.
int connectAndSend(std::uint16_t port, const std::vector<std::uint8_t>& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  timeval bound{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
  if (!bytes.empty()) REQUIRE(::send(fd, bytes.data(), bytes.size(), 0) == ssize_t(bytes.size()));
  return fd;
}

// True when the node closed the connection before the receive timeout: end of file, or a reset
// when it closed with our bytes still unread.
bool closedByNode(int fd) {
  char byte = 0;
  const ssize_t n = ::recv(fd, &byte, 1, 0);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

}  // namespace

TEST_CASE("at most 8 push/pull streams are read at once; the next is closed and counted") {
  Node node;
  const std::vector<std::uint8_t> half_header = {0, 0};  // a stream that never says its length
  std::vector<int> held;
  for (int i = 0; i < NetTransport::kMaxInboundStreams; ++i) {
    held.push_back(connectAndSend(node.transport->port(), half_header));
  }
  const int extra = connectAndSend(node.transport->port(), half_header);
  CHECK(closedByNode(extra));
  CHECK(node.transport->stats().streams_refused.load() == 1);
  ::close(extra);
  // The held ones end at their read deadline (2 s); then a new stream is read again.
  for (int fd : held) {
    CHECK(closedByNode(fd));
    ::close(fd);
  }
  const int later = connectAndSend(node.transport->port(), half_header);
  CHECK(closedByNode(later));  // by its own deadline, not refused
  CHECK(node.transport->stats().streams_refused.load() == 1);
  ::close(later);
}

TEST_CASE("a push/pull stream announcing more than the bound is closed before any body is read") {
  Node node;
  const std::uint32_t len = kMaxStream + 1;
  const std::vector<std::uint8_t> header = {
      static_cast<std::uint8_t>(len >> 24), static_cast<std::uint8_t>(len >> 16),
      static_cast<std::uint8_t>(len >> 8), static_cast<std::uint8_t>(len)};
  const int fd = connectAndSend(node.transport->port(), header);
  CHECK(closedByNode(fd));
  CHECK(node.transport->stats().oversized_dropped.load() == 1);
  ::close(fd);
}
