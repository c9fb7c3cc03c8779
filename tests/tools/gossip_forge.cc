// gossip-forge: sends one forged gossip datagram, as an attacker on the cluster's network would,
// so integration tests can replay the attacks of docs/security.md and show they fail.
//
//   gossip-forge --to 127.0.0.1:7946 --cluster it --state left --id n3 [--key BASE64]
//
// The packet claims that member --id is in --state at --incarnation, reachable at --address with
// RPC at --rpc (an attacker's addresses), sent by --sender. Without --key it is plain; with one it
// is sealed with that key (a wrong key, or the right one as a control).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "gossip/codec.h"
#include "gossip/keyring.h"

using namespace throttlex::gossip;

int main(int argc, char** argv) {
  CLI::App app{"gossip-forge: send one forged gossip datagram (tests only)"};
  std::string to, cluster, state = "alive", id, address = "127.0.0.1:1", rpc = "127.0.0.1:1";
  std::string sender = "intruder", key;
  std::uint64_t incarnation = 1;
  app.add_option("--to", to, "The node's gossip host:port (IPv4)")->required();
  app.add_option("--cluster", cluster, "The cluster name")->required();
  app.add_option("--state", state, "alive | suspect | dead | left")
      ->check(CLI::IsMember({"alive", "suspect", "dead", "left"}));
  app.add_option("--id", id, "The member the packet lies about")->required();
  app.add_option("--incarnation", incarnation, "Its incarnation in the packet");
  app.add_option("--address", address, "Its gossip address in the packet");
  app.add_option("--rpc", rpc, "Its RPC address in the packet");
  app.add_option("--sender", sender, "The sender id in the packet");
  app.add_option("--key", key, "Seal with this base64 key (default: plain)");
  CLI11_PARSE(app, argc, argv);

  Message m;
  m.sender_id = sender;
  m.sender_address = address;
  m.type = MessageType::kGossip;
  Update u;
  u.state = state == "alive"     ? MemberState::kAlive
            : state == "suspect" ? MemberState::kSuspect
            : state == "dead"    ? MemberState::kDead
                                 : MemberState::kLeft;
  u.id = id;
  u.address = address;
  u.incarnation = incarnation;
  u.meta = NodeMeta{rpc, rpc, 1};
  u.from = sender;
  m.updates = {u};

  Keyring keyring;
  if (!key.empty()) {
    auto parsed = parseKey(key);
    if (!parsed) {
      std::cerr << "gossip-forge: --key: " << parsed.error().message << "\n";
      return 2;
    }
    (void)keyring.install(*parsed);
  }
  auto bytes = encode(m, cluster, Security{&keyring});

  auto colon = to.rfind(':');
  sockaddr_in dest{};
  dest.sin_family = AF_INET;
  dest.sin_port = htons(static_cast<std::uint16_t>(std::stoi(to.substr(colon + 1))));
  if (colon == std::string::npos ||
      inet_pton(AF_INET, to.substr(0, colon).c_str(), &dest.sin_addr) != 1) {
    std::cerr << "gossip-forge: --to must be IPv4 host:port\n";
    return 2;
  }
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0 || ::sendto(fd, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&dest),
                         sizeof dest) != static_cast<ssize_t>(bytes.size())) {
    std::perror("gossip-forge: sendto");
    return 1;
  }
  ::close(fd);
  return 0;
}
