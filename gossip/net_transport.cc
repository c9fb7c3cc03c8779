#include "gossip/net_transport.h"

#include <array>

#include "proto/address.h"

namespace throttlex::gossip {
namespace {

constexpr auto kStreamDeadline = std::chrono::seconds(2);
constexpr std::size_t kMaxDatagram = 65536;

std::string formatEndpoint(const asio::ip::address& ip, std::uint16_t port) {
  return ip.is_v6() ? "[" + ip.to_string() + "]:" + std::to_string(port)
                    : ip.to_string() + ":" + std::to_string(port);
}

// One inbound push/pull: a 4-byte big-endian length, then the message.
constexpr auto kAcceptRetry = std::chrono::milliseconds(100);

struct InboundStream : std::enable_shared_from_this<InboundStream> {
  InboundStream(asio::ip::tcp::socket s, asio::io_context& io, std::shared_ptr<int> open)
      : socket(std::move(s)), timer(io), open_streams(std::move(open)) {
    ++*open_streams;
  }
  ~InboundStream() { --*open_streams; }
  InboundStream(const InboundStream&) = delete;
  InboundStream& operator=(const InboundStream&) = delete;
  asio::ip::tcp::socket socket;
  asio::steady_timer timer;
  std::array<std::uint8_t, 4> header{};
  std::vector<std::uint8_t> body;
  std::shared_ptr<int> open_streams;  // the transport's count (io thread only)
};

}  // namespace

NetTransport::NetTransport(asio::io_context& io, std::size_t max_stream_bytes, Receive receive)
    : io_(io),
      max_stream_bytes_(max_stream_bytes),
      receive_(std::move(receive)),
      udp_(io),
      tcp_(io),
      accept_retry_(io),
      datagram_(kMaxDatagram) {}

NetTransport::~NetTransport() {
  *alive_ = false;
}

Result<std::unique_ptr<NetTransport>> NetTransport::open(asio::io_context& io,
                                                         const std::string& bind_address,
                                                         std::uint16_t port,
                                                         std::size_t max_stream_bytes,
                                                         Receive receive) {
  std::unique_ptr<NetTransport> t(new NetTransport(io, max_stream_bytes, std::move(receive)));
  asio::error_code ec;
  const auto ip = asio::ip::make_address(bind_address, ec);
  if (ec) return invalidArgument("gossip bind address '" + bind_address + "' is not an IP address");
  // TCP first: with port 0 it picks the port, and UDP then binds the same number.
  const asio::ip::tcp::endpoint tcp_ep(ip, port);
  t->tcp_.open(tcp_ep.protocol(), ec);
  if (!ec) t->tcp_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) t->tcp_.bind(tcp_ep, ec);
  if (!ec) t->tcp_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    return Error{ErrorCode::kUnavailable,
                 "gossip TCP " + formatEndpoint(ip, port) + ": " + ec.message()};
  t->port_ = t->tcp_.local_endpoint().port();
  const asio::ip::udp::endpoint udp_ep(ip, t->port_);
  t->udp_.open(udp_ep.protocol(), ec);
  if (!ec) t->udp_.bind(udp_ep, ec);
  if (ec)
    return Error{ErrorCode::kUnavailable,
                 "gossip UDP " + formatEndpoint(ip, t->port_) + ": " + ec.message()};
  t->receiveDatagram();
  t->acceptStream();
  return t;
}

void NetTransport::close() {
  *alive_ = false;
  asio::error_code ec;
  udp_.close(ec);
  tcp_.close(ec);
  accept_retry_.cancel();
}

void NetTransport::receiveDatagram() {
  udp_.async_receive_from(asio::buffer(datagram_), sender_,
                          [this, alive = alive_](const asio::error_code& ec, std::size_t n) {
                            if (!*alive || ec == asio::error::operation_aborted) return;
                            if (!ec) {
                              Packet p;
                              p.from = formatEndpoint(sender_.address(), sender_.port());
                              p.channel = Channel::kDatagram;
                              p.bytes.assign(datagram_.begin(),
                                             datagram_.begin() + static_cast<std::ptrdiff_t>(n));
                              receive_(std::move(p));
                            }
                            receiveDatagram();
                          });
}

void NetTransport::acceptStream() {
  tcp_.async_accept([this, alive = alive_](const asio::error_code& ec, asio::ip::tcp::socket s) {
    if (!*alive || ec == asio::error::operation_aborted) return;
    if (ec) {  // out of descriptors and the like: keep what is open, try again later
      stats_.accept_errors.fetch_add(1, std::memory_order_relaxed);
      accept_retry_.expires_after(kAcceptRetry);
      accept_retry_.async_wait([this, alive](const asio::error_code& e) {
        if (!e && *alive) acceptStream();
      });
      return;
    }
    if (*inbound_ >= kMaxInboundStreams) {
      stats_.streams_refused.fetch_add(1, std::memory_order_relaxed);  // `s` closes here
    } else {
      auto in = std::make_shared<InboundStream>(std::move(s), io_, inbound_);
      in->timer.expires_after(kStreamDeadline);
      in->timer.async_wait([in](const asio::error_code& e) {
        if (!e) {
          asio::error_code ignore;
          in->socket.close(ignore);
        }
      });
      asio::async_read(
          in->socket, asio::buffer(in->header),
          [this, alive, in](const asio::error_code& e1, std::size_t) {
            if (e1 || !*alive) return;
            const std::size_t len = (std::size_t{in->header[0]} << 24) |
                                    (std::size_t{in->header[1]} << 16) |
                                    (std::size_t{in->header[2]} << 8) | std::size_t{in->header[3]};
            if (len > max_stream_bytes_) {
              stats_.oversized_dropped.fetch_add(1, std::memory_order_relaxed);
              in->timer.cancel();
              return;
            }
            in->body.resize(len);
            asio::async_read(in->socket, asio::buffer(in->body),
                             [this, alive, in](const asio::error_code& e2, std::size_t) {
                               in->timer.cancel();
                               if (e2 || !*alive) return;
                               asio::error_code ignore;
                               const auto remote = in->socket.remote_endpoint(ignore);
                               Packet p;
                               p.from = formatEndpoint(remote.address(), remote.port());
                               p.channel = Channel::kStream;
                               p.bytes = std::move(in->body);
                               receive_(std::move(p));
                             });
          });
    }
    acceptStream();
  });
}

void NetTransport::send(const std::string& to, Channel channel, std::vector<std::uint8_t> bytes) {
  std::string host;
  std::uint16_t port = 0;
  if (!proto::splitHostPort(to, host, port)) {
    stats_.send_failures.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  auto payload = std::make_shared<std::vector<std::uint8_t>>(std::move(bytes));
  asio::error_code ec;
  const auto ip = asio::ip::make_address(host, ec);
  if (!ec) return sendTo(ip, port, channel, std::move(payload));
  // A host name: resolve without blocking the protocol.
  auto resolver = std::make_shared<asio::ip::udp::resolver>(io_);
  resolver->async_resolve(host, std::to_string(port),
                          [this, alive = alive_, resolver, port, channel, payload](
                              const asio::error_code& e, asio::ip::udp::resolver::results_type r) {
                            if (!*alive) return;
                            if (e || r.empty()) {
                              stats_.send_failures.fetch_add(1, std::memory_order_relaxed);
                              return;
                            }
                            sendTo(r.begin()->endpoint().address(), port, channel, payload);
                          });
}

void NetTransport::sendTo(const asio::ip::address& ip, std::uint16_t port, Channel channel,
                          std::shared_ptr<std::vector<std::uint8_t>> bytes) {
  if (channel == Channel::kDatagram) {
    asio::error_code ec;
    udp_.send_to(asio::buffer(*bytes), asio::ip::udp::endpoint(ip, port), 0,
                 ec);  // non-blocking in practice
    if (ec) stats_.send_failures.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  struct Outbound {
    explicit Outbound(asio::io_context& io) : socket(io), timer(io) {}
    asio::ip::tcp::socket socket;
    asio::steady_timer timer;
    std::array<std::uint8_t, 4> header{};
  };
  auto out = std::make_shared<Outbound>(io_);
  const auto n = static_cast<std::uint32_t>(bytes->size());
  out->header = {static_cast<std::uint8_t>(n >> 24), static_cast<std::uint8_t>(n >> 16),
                 static_cast<std::uint8_t>(n >> 8), static_cast<std::uint8_t>(n)};
  out->timer.expires_after(kStreamDeadline);
  out->timer.async_wait([out](const asio::error_code& e) {
    if (!e) {
      asio::error_code ignore;
      out->socket.close(ignore);
    }
  });
  out->socket.async_connect(asio::ip::tcp::endpoint(ip, port), [this, alive = alive_, out,
                                                                bytes](const asio::error_code& e) {
    if (e) {
      out->timer.cancel();
      if (*alive) stats_.send_failures.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const std::array<asio::const_buffer, 2> buffers = {asio::buffer(out->header),
                                                       asio::buffer(*bytes)};
    asio::async_write(out->socket, buffers,
                      [this, alive, out, bytes](const asio::error_code& we, std::size_t) {
                        out->timer.cancel();
                        asio::error_code ignore;
                        out->socket.shutdown(asio::ip::tcp::socket::shutdown_both, ignore);
                        out->socket.close(ignore);
                        if (we && *alive)
                          stats_.send_failures.fetch_add(1, std::memory_order_relaxed);
                      });
  });
}

}  // namespace throttlex::gossip
