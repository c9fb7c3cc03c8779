// This node's membership in the cluster: the SWIM core (gossip/membership.h) on its real transport,
// on a thread of its own. Other threads read a snapshot of the member list.
//
// Whenever the set of alive members changes, it publishes the ring they form
// (daemon/routing/ring_view.h) for the request threads, which route checks by it
// (daemon/routing/router.h).
#pragma once

#include <asio.hpp>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/base/node_info.h"
#include "daemon/routing/ring_view.h"
#include "gossip/gossip.h"
#include "gossip/net_transport.h"
#include "gossip/ring.h"
#include "limiter/clock.h"
#include "limiter/mutex.h"

namespace throttlex {

struct ClusterOptions {
  std::string cluster_name = "throttlex";
  std::string node_id;
  std::string bind_address = "0.0.0.0";
  std::string advertise_host;  // what other nodes send to
  std::uint16_t port = 7946;   // 0: any free port
  std::vector<std::string> seeds;
  gossip::Timing timing = gossip::Timing::lan();
  gossip::NodeMeta meta;
  // The gossip keyring (null: unauthenticated gossip) and its switches (gossip/codec.h).
  std::shared_ptr<const gossip::Keyring> keyring;
  bool verify_incoming = true;
  bool verify_outgoing = true;
  RingHolder* ring = nullptr;  // where to publish the ring of alive members; may be null
  // Called on the gossip thread after each new ring was published (must not block).
  std::function<void(std::shared_ptr<const RingView>)> on_ring;
};

class ClusterNode {
 public:
  // Binds the gossip port, starts the thread and sends the joins. `clock` must outlive it.
  static Result<std::unique_ptr<ClusterNode>> start(ClusterOptions options, const Clock& clock);
  ~ClusterNode();  // leave()s if still running

  std::uint16_t port() const { return port_; }
  // Announces a voluntary leave and keeps gossiping (returns at once; the others stop routing
  // here when they hear of it).
  void announceLeave();
  // Announces a voluntary leave (unless announced already), lets it spread for a moment, then
  // stops the thread.
  void leave();
  std::vector<MemberInfo> members() const;  // thread-safe snapshot, ordered by id
  ClusterStats stats() const;               // thread-safe snapshot

 private:
  ClusterNode(ClusterOptions options, const Clock& clock);
  void scheduleTick();
  void publish();      // after every step: events to the log, members to the snapshot
  void publishRing();  // a new RingView when the alive members changed

  const ClusterOptions options_;
  const Clock& clock_;
  asio::io_context io_;
  asio::steady_timer timer_{io_};
  std::unique_ptr<gossip::NetTransport> transport_;
  std::unique_ptr<gossip::Membership> membership_;
  std::uint16_t port_ = 0;
  std::thread thread_;

  mutable Mutex mu_;
  std::vector<MemberInfo> snapshot_ GUARDED_BY(mu_);
  ClusterStats stats_ GUARDED_BY(mu_);
  // Gossip thread only.
  std::vector<std::pair<std::string, std::string>> ring_members_;  // last published: id, rpc
  bool ring_published_ = false;
};

}  // namespace throttlex
