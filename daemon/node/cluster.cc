#include "daemon/node/cluster.h"

#include "daemon/base/log.h"
#include "limiter/mutex.h"

#include <algorithm>

namespace throttlex {
namespace {
// How often the membership core is stepped. Well below every preset's probe timeout.
constexpr auto kTick = std::chrono::milliseconds(20);
constexpr auto kLeaveGrace = std::chrono::milliseconds(500);
}  // namespace

ClusterNode::ClusterNode(ClusterOptions options, const Clock& clock)
    : options_(std::move(options)), clock_(clock) {}

Result<std::unique_ptr<ClusterNode>> ClusterNode::start(ClusterOptions options,
                                                        const Clock& clock) {
  std::unique_ptr<ClusterNode> node(new ClusterNode(std::move(options), clock));
  ClusterNode* self = node.get();
  auto transport =
      gossip::NetTransport::open(node->io_, node->options_.bind_address, node->options_.port,
                                 node->options_.timing.max_stream_bytes, [self](gossip::Packet p) {
                                   self->membership_->receive(p, self->clock_.now());
                                   self->publish();
                                 });
  if (!transport) return transport.error();
  node->transport_ = std::move(*transport);
  node->port_ = node->transport_->port();

  gossip::Options mo;
  mo.cluster = node->options_.cluster_name;
  mo.id = node->options_.node_id;
  mo.address = node->options_.advertise_host + ":" + std::to_string(node->port_);
  mo.meta = node->options_.meta;
  mo.timing = node->options_.timing;
  mo.keyring = node->options_.keyring;
  mo.verify_incoming = node->options_.verify_incoming;
  mo.verify_outgoing = node->options_.verify_outgoing;
  mo.seed = std::hash<std::string>{}(mo.id) ^
            static_cast<std::uint64_t>(clock.now().time_since_epoch().count());
  auto membership = gossip::Membership::create(mo, *node->transport_, clock.now());
  if (!membership) return membership.error();
  node->membership_ = std::move(*membership);
  if (!node->options_.seeds.empty()) node->membership_->join(node->options_.seeds, clock.now());
  node->publish();
  node->scheduleTick();
  node->thread_ = std::thread([self] { self->io_.run(); });
  return node;
}

ClusterNode::~ClusterNode() {
  leave();
}

void ClusterNode::scheduleTick() {
  timer_.expires_after(kTick);
  timer_.async_wait([this](const asio::error_code& ec) {
    if (ec) return;
    membership_->tick(clock_.now());
    publish();
    scheduleTick();
  });
}

void ClusterNode::publish() {
  const std::vector<gossip::Event> events = membership_->takeEvents();
  std::vector<MemberInfo> members;
  ClusterStats st;
  for (const gossip::Member& m : membership_->members()) {
    members.push_back({m.id, m.address, m.meta.rpc_address, m.meta.http_address,
                       gossip::nameOf(m.state), m.incarnation});
    switch (m.state) {
      case gossip::MemberState::kAlive:
        ++st.alive;
        break;
      case gossip::MemberState::kSuspect:
        ++st.suspect;
        break;
      case gossip::MemberState::kDead:
        ++st.dead;
        break;
      case gossip::MemberState::kLeft:
        ++st.left;
        break;
    }
  }
  const gossip::Counters& c = membership_->counters();
  st.packets_sent = c.packets_sent;
  st.packets_received = c.packets_received;
  st.dropped_malformed = c.dropped_malformed;
  st.dropped_foreign_cluster = c.dropped_foreign_cluster;
  st.dropped_version = c.dropped_version;
  st.dropped_misdirected = c.dropped_misdirected;
  st.dropped_member_cap = c.dropped_member_cap;
  st.dropped_unauthenticated = c.dropped_unauthenticated;
  if (options_.keyring) {
    const auto keys = options_.keyring->list();
    st.keyring = !keys.empty();
    st.primary_key_id = keys.empty() ? 0 : keys.front().id;
  }
  const gossip::NetTransportStats& t = transport_->stats();
  st.send_failures = t.send_failures.load(std::memory_order_relaxed);
  st.dropped_oversized = t.oversized_dropped.load(std::memory_order_relaxed);
  st.dropped_stream_limit = t.streams_refused.load(std::memory_order_relaxed);
  st.accept_errors = t.accept_errors.load(std::memory_order_relaxed);
  {
    MutexLock guard(mu_);
    snapshot_ = std::move(members);
    stats_ = st;
  }
  // After the snapshot: whoever on_ring wakes reads members() that include the ring's members.
  publishRing();
  // Logged after the snapshot is published: whoever sees the line sees the state in /v1/cluster.
  for (const gossip::Event& e : events) {
    logInfo(std::string("member ") + e.member.id + " " + gossip::nameOf(e.type) + " (" +
            gossip::nameOf(e.member.state) + ", incarnation " +
            std::to_string(e.member.incarnation) + ", " + e.member.address + ")");
  }
}

void ClusterNode::publishRing() {
  if (options_.ring == nullptr) return;
  // Suspect members keep their slots: suspicion is often a slow packet, and moving slots back
  // and forth would split keys' state. While a suspect really is down, checks for its keys are
  // decided in degraded mode (its breaker is open) until it is declared dead.
  std::vector<std::pair<std::string, std::string>> alive;  // id, rpc address
  for (const gossip::Member& m : membership_->members()) {
    if (m.state == gossip::MemberState::kAlive || m.state == gossip::MemberState::kSuspect) {
      alive.emplace_back(m.id, m.meta.rpc_address);
    }
  }
  std::sort(alive.begin(), alive.end());
  if (alive == ring_members_ && ring_published_) return;  // the usual case: nothing changed
  // Once this node has left, it keeps its last ring: it owns nothing new, and a ring without it
  // has no place for "self".
  if (std::none_of(alive.begin(), alive.end(),
                   [this](const auto& m) { return m.first == options_.node_id; })) {
    return;
  }
  ring_members_ = alive;
  ring_published_ = true;
  std::vector<std::string> ids;
  for (const auto& [id, rpc] : alive) ids.push_back(id);
  auto view = std::make_shared<RingView>();
  view->ring = Ring(ids);
  view->rpc_address.resize(view->ring.members().size());
  for (std::size_t i = 0; i < view->ring.members().size(); ++i) {
    view->rpc_address[i] = alive[i].second;  // both sorted by id, ids unique
    if (view->ring.members()[i] == options_.node_id) view->self = static_cast<std::uint32_t>(i);
  }
  options_.ring->publish(view);
  if (options_.on_ring) options_.on_ring(std::move(view));
  logInfo("ring: " + std::to_string(ids.size()) + " members own the " + std::to_string(kSlotCount) +
          " slots");
}

void ClusterNode::announceLeave() {
  if (!thread_.joinable()) return;
  asio::post(io_, [this] {
    membership_->leave(clock_.now());  // a second call is a no-op
    publish();
  });
}

void ClusterNode::leave() {
  if (!thread_.joinable()) return;
  // Announce on the gossip thread (posted first, so it runs first), keep stepping for a moment so
  // the news gets out, then stop.
  announceLeave();
  asio::post(io_, [this] {
    auto done = std::make_shared<asio::steady_timer>(io_, kLeaveGrace);
    done->async_wait([this, done](const asio::error_code&) {
      timer_.cancel();
      transport_->close();
      io_.stop();
    });
  });
  thread_.join();
}

ClusterStats ClusterNode::stats() const {
  MutexLock guard(mu_);
  return stats_;
}

std::vector<MemberInfo> ClusterNode::members() const {
  MutexLock guard(mu_);
  return snapshot_;
}

}  // namespace throttlex
