// The real gossip transport: UDP datagrams for probes and gossip, TCP for push/pull, both on the
// same port number. Runs on an Asio io_context owned by the caller; send() and the receive
// callback happen on that io_context's thread (Membership is single-threaded).
//
// send() never blocks: host names are resolved asynchronously, TCP connects and writes carry a
// deadline, and failures are silent (the protocol tolerates loss) but counted.
#pragma once

#include <asio.hpp>
#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "gossip/transport.h"
#include "limiter/result.h"

namespace throttlex::gossip {

struct NetTransportStats {
  std::atomic<std::uint64_t> send_failures{0};      // unresolvable, refused, timed out
  std::atomic<std::uint64_t> oversized_dropped{0};  // inbound stream over max_stream_bytes
  std::atomic<std::uint64_t> streams_refused{0};    // inbound streams over kMaxInboundStreams
  std::atomic<std::uint64_t> accept_errors{0};      // failed accepts (out of descriptors, ...)
};

class NetTransport final : public Transport {
 public:
  using Receive = std::function<void(Packet)>;
  // Inbound push/pull streams read at once; more are closed at accept. Each may buffer up to
  // max_stream_bytes, so this bounds what slow or hostile senders can make the node hold.
  static constexpr int kMaxInboundStreams = 8;

  // Binds UDP and TCP on bind_address:port (port 0: any free port, the same for both).
  static Result<std::unique_ptr<NetTransport>> open(asio::io_context& io,
                                                    const std::string& bind_address,
                                                    std::uint16_t port,
                                                    std::size_t max_stream_bytes, Receive receive);
  ~NetTransport() override;

  std::uint16_t port() const { return port_; }
  void send(const std::string& to, Channel channel, std::vector<std::uint8_t> bytes) override;
  void close();  // on the io thread
  const NetTransportStats& stats() const { return stats_; }

 private:
  NetTransport(asio::io_context& io, std::size_t max_stream_bytes, Receive receive);
  void receiveDatagram();
  void acceptStream();
  void sendTo(const asio::ip::address& ip, std::uint16_t port, Channel channel,
              std::shared_ptr<std::vector<std::uint8_t>> bytes);

  asio::io_context& io_;
  const std::size_t max_stream_bytes_;
  const Receive receive_;
  asio::ip::udp::socket udp_;
  asio::ip::tcp::acceptor tcp_;
  asio::steady_timer accept_retry_;  // after a failed accept: try again later, never spin
  std::shared_ptr<int> inbound_ = std::make_shared<int>(0);  // streams being read now
  asio::ip::udp::endpoint sender_;
  std::vector<std::uint8_t> datagram_;
  std::uint16_t port_ = 0;
  NetTransportStats stats_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // handlers check it after close
};

}  // namespace throttlex::gossip
