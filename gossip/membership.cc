#include "gossip/membership.h"

#include <algorithm>
#include <cassert>
#include <limits>
#include <utility>

#include "gossip/codec.h"

namespace throttlex::gossip {
namespace {

constexpr Duration kJoinBackoffMin = std::chrono::seconds(1);
constexpr Duration kJoinBackoffMax = std::chrono::seconds(30);

bool isLive(MemberState s) {
  return s == MemberState::kAlive || s == MemberState::kSuspect;
}

}  // namespace

const char* nameOf(MemberState state) {
  switch (state) {
    case MemberState::kAlive:
      return "alive";
    case MemberState::kSuspect:
      return "suspect";
    case MemberState::kDead:
      return "dead";
    case MemberState::kLeft:
      return "left";
  }
  return "?";
}

const char* nameOf(EventType type) {
  switch (type) {
    case EventType::kJoined:
      return "joined";
    case EventType::kUpdated:
      return "updated";
    case EventType::kSuspect:
      return "suspect";
    case EventType::kDead:
      return "dead";
    case EventType::kLeft:
      return "left";
  }
  return "?";
}

Status validate(const Options& o) {
  if (o.cluster.empty()) return invalidArgument("gossip: cluster name is empty");
  if (o.id.empty()) return invalidArgument("gossip: node id is empty");
  if (o.address.empty()) return invalidArgument("gossip: address is empty");
  if (o.max_members < 1) return invalidArgument("gossip: max_members must be at least 1");
  const Timing& t = o.timing;
  if (t.protocol_period <= Duration::zero() || t.probe_timeout <= Duration::zero() ||
      t.probe_timeout >= t.protocol_period) {
    return invalidArgument("gossip: need 0 < probe_timeout < protocol_period");
  }
  if (t.gossip_interval <= Duration::zero() || t.push_pull_interval <= Duration::zero()) {
    return invalidArgument("gossip: gossip and push/pull intervals must be positive");
  }
  if (t.indirect_checks < 0 || t.suspicion_mult < 1 || t.suspicion_max_mult < 1 ||
      t.retransmit_mult < 1 || t.gossip_nodes < 1) {
    return invalidArgument("gossip: multipliers and counts must be positive");
  }
  if (t.max_datagram_bytes < 512 || t.max_stream_bytes < t.max_datagram_bytes) {
    return invalidArgument("gossip: max_datagram_bytes >= 512 and max_stream_bytes >= it");
  }
  return Ok{};
}

Result<std::unique_ptr<Membership>> Membership::create(Options options, Transport& transport,
                                                       Time now) {
  if (Status s = validate(options); !s) return s.error();
  return std::make_unique<Membership>(std::move(options), transport, now);
}

Membership::Membership(Options options, Transport& transport, Time now)
    : options_(std::move(options)),
      transport_(transport),
      rng_(options_.seed),
      next_probe_at_(now),
      next_gossip_at_(now),
      next_push_pull_at_(now + options_.timing.push_pull_interval) {
  assert(validate(options_).ok());
  Member self{options_.id, options_.address, options_.meta, 1, MemberState::kAlive, now};
  members_.emplace(self.id, self);
  broadcasts_.enqueue(updateOf(self));
  // Spread the nodes' probe phases over the period so they do not all probe at once.
  std::uniform_int_distribution<Duration::rep> phase(0, options_.timing.protocol_period.count());
  next_probe_at_ = now + Duration(phase(rng_));
  // Likewise the first push/pull, so a cluster started at once does not exchange state in bursts.
  std::uniform_int_distribution<Duration::rep> stagger(0,
                                                       options_.timing.push_pull_interval.count());
  next_push_pull_at_ = now + Duration(stagger(rng_));
}

// ---- driving ---------------------------------------------------------------------------------

void Membership::join(const std::vector<std::string>& seeds, Time now) {
  seeds_.clear();
  for (const auto& s : seeds) {
    if (s != options_.address) seeds_.push_back(s);
  }
  join_backoff_ = kJoinBackoffMin;
  next_join_at_ = now;
  tick(now);
}

void Membership::leave(Time now) {
  if (leaving_) return;
  leaving_ = true;
  Member& me = members_.at(options_.id);
  ++me.incarnation;
  setState(me, MemberState::kLeft, now);
  Update u = updateOf(me);
  u.from = me.id;
  broadcasts_.enqueue(u);
  probe_.reset();
  gossipTick(now);
  // Gossip alone reaches everyone only after a few rounds, and later still on busy machines; a
  // node that leaves tells every alive member at once, over the reliable channel, so they stop
  // routing to it while it is still there to pass checks on.
  Message m = message(MessageType::kPushPull);
  m.reply = true;  // nothing to answer: the state of the others no longer matters here
  m.members = fullState();
  for (const Member* peer : randomMembers(members_.size(), options_.id, Pick::kLive, now)) {
    ++counters_.push_pulls;
    send(peer->address, m, Channel::kStream);
  }
}

void Membership::updateMeta(NodeMeta meta, Time now) {
  options_.meta = meta;
  Member& me = members_.at(options_.id);
  me.meta = std::move(meta);
  ++me.incarnation;
  (void)now;
  broadcasts_.enqueue(updateOf(me));
}

void Membership::tick(Time now) {
  if (!seeds_.empty() && now >= next_join_at_) {
    if (liveCount() > 1) {
      seeds_.clear();  // joined: someone answered (or found us)
    } else {
      Message m = message(MessageType::kPushPull);
      m.join = true;
      m.members = fullState();
      for (const auto& seed : seeds_) send(seed, m, Channel::kStream);
      next_join_at_ = now + join_backoff_;
      join_backoff_ = std::min(join_backoff_ * 2, kJoinBackoffMax);
    }
  }
  checkSuspicions(now);
  if (!leaving_) probeTick(now);
  if (now >= next_gossip_at_) {
    gossipTick(now);
    next_gossip_at_ = std::max(next_gossip_at_ + options_.timing.gossip_interval, now);
  }
  if (!leaving_ && now >= next_push_pull_at_) {
    pushPullTick(now);
    next_push_pull_at_ = now + options_.timing.push_pull_interval;
    reap(now);
  }
  std::erase_if(relays_, [&](const auto& r) { return r.second.expires <= now; });
}

std::vector<Event> Membership::takeEvents() {
  return std::exchange(events_, {});
}

// ---- probing -----------------------------------------------------------------------------------

void Membership::probeTick(Time now) {
  const Timing& t = options_.timing;
  if (probe_ && !probe_->indirect_sent && now >= probe_->started + t.probe_timeout) {
    probe_->indirect_sent = true;
    auto it = members_.find(probe_->target);
    if (it != members_.end()) {
      Message m = message(MessageType::kPingReq);
      m.seq = probe_->seq;
      m.target_id = it->second.id;
      m.target_address = it->second.address;
      for (const Member* relay : randomMembers(static_cast<std::size_t>(t.indirect_checks),
                                               probe_->target, Pick::kAlive, now)) {
        ++counters_.indirect_probes;
        send(relay->address, m, Channel::kDatagram);
      }
    }
  }
  if (probe_ && now >= probe_->started + t.protocol_period) probeFailed(now);
  if (now >= next_probe_at_) {
    startProbe(now);
    next_probe_at_ = std::max(next_probe_at_ + t.protocol_period, now);
  }
}

void Membership::startProbe(Time now) {
  if (probe_) probeFailed(now);  // the tick came late; the previous period is over anyway
  // Round-robin over a shuffled list: every member is probed within n periods (SWIM §4.3).
  for (std::size_t tries = 0; tries < 2; ++tries) {
    while (probe_index_ < probe_order_.size()) {
      auto it = members_.find(probe_order_[probe_index_++]);
      if (it == members_.end() || it->first == options_.id || !isLive(it->second.state)) continue;
      probe_ = Probe{it->first, next_seq_++, now, false};
      ++counters_.probes;
      Message m = message(MessageType::kPing);
      m.seq = probe_->seq;
      m.target_id = it->first;
      if (it->second.state == MemberState::kSuspect) {
        // Lifeguard's buddy system: tell the suspect directly, so that it refutes in its ack.
        Update u = updateOf(it->second);
        u.from = options_.id;
        m.updates.push_back(std::move(u));
      }
      send(it->second.address, std::move(m), Channel::kDatagram);
      return;
    }
    probe_order_.clear();
    for (const auto& [id, m] : members_) {
      if (id != options_.id && isLive(m.state)) probe_order_.push_back(id);
    }
    std::shuffle(probe_order_.begin(), probe_order_.end(), rng_);
    probe_index_ = 0;
  }
}

void Membership::probeFailed(Time now) {
  Probe p = *probe_;
  probe_.reset();
  auto it = members_.find(p.target);
  if (it == members_.end() || !isLive(it->second.state)) return;
  ++counters_.probe_failures;
  Update u = updateOf(it->second);
  u.state = MemberState::kSuspect;
  u.from = options_.id;
  apply(u, now);
}

void Membership::checkSuspicions(Time now) {
  std::vector<std::string> expired;
  for (const auto& [id, s] : suspicions_) {
    if (now >= s.deadline()) expired.push_back(id);
  }
  for (const auto& id : expired) {
    suspicions_.erase(id);
    auto it = members_.find(id);
    if (it == members_.end() || it->second.state != MemberState::kSuspect) continue;
    Update u = updateOf(it->second);
    u.state = MemberState::kDead;
    u.from = options_.id;
    apply(u, now);
  }
}

void Membership::reap(Time now) {
  std::erase_if(members_, [&](const auto& entry) {
    const Member& m = entry.second;
    return !isLive(m.state) && now - m.state_since > options_.timing.reap_after;
  });
}

// ---- dissemination -----------------------------------------------------------------------------

void Membership::gossipTick(Time now) {
  if (broadcasts_.size() == 0) return;
  // Suspects and the recently dead get gossip too: that is how they learn of it and refute.
  auto targets = randomMembers(static_cast<std::size_t>(options_.timing.gossip_nodes), options_.id,
                               Pick::kGossip, now);
  for (const Member* target : targets) {
    send(target->address, message(MessageType::kGossip), Channel::kDatagram);
  }
}

void Membership::pushPullTick(Time now) {
  Message m = message(MessageType::kPushPull);
  m.members = fullState();
  for (const Member* peer : randomMembers(1, options_.id, Pick::kAlive, now)) {
    ++counters_.push_pulls;
    send(peer->address, m, Channel::kStream);
  }
  // Members we think dead may be on the other side of a partition that has healed; a push/pull
  // tells them (they refute) and us (their state comes back).
  for (const Member* peer : randomMembers(1, options_.id, Pick::kDead, now)) {
    ++counters_.push_pulls;
    send(peer->address, m, Channel::kStream);
  }
}

// ---- receiving ---------------------------------------------------------------------------------

void Membership::receive(const Packet& packet, Time now) {
  ++counters_.packets_received;
  std::size_t bound = packet.channel == Channel::kStream ? options_.timing.max_stream_bytes
                                                         : options_.timing.max_datagram_bytes;
  Message m;
  switch (decode(packet.bytes, options_.cluster, bound, m, security())) {
    case DecodeStatus::kOk:
      handle(m, packet, now);
      return;
    case DecodeStatus::kForeignCluster:
      ++counters_.dropped_foreign_cluster;
      return;
    case DecodeStatus::kVersion:
      ++counters_.dropped_version;
      return;
    case DecodeStatus::kUnauthenticated:
    case DecodeStatus::kAuthFailed:
      ++counters_.dropped_unauthenticated;
      return;
    case DecodeStatus::kTooLarge:
    case DecodeStatus::kMalformed:
    case DecodeStatus::kUnknownType:
      ++counters_.dropped_malformed;
      return;
  }
}

void Membership::handle(const Message& m, const Packet& packet, Time now) {
  for (const Update& u : m.updates) applyRemote(u, m.sender_id, now);
  switch (m.type) {
    case MessageType::kGossip:
      break;
    case MessageType::kPing:
      onPing(m, packet, now);
      break;
    case MessageType::kPingReq:
      onPingReq(m, now);
      break;
    case MessageType::kAck:
      onAck(m, now);
      break;
    case MessageType::kPushPull:
      onPushPull(m, now);
      break;
  }
}

void Membership::onPing(const Message& m, const Packet& packet, Time /*now*/) {
  if (m.target_id != options_.id) {
    ++counters_.dropped_misdirected;
    return;
  }
  Message ack = message(MessageType::kAck);
  ack.seq = m.seq;
  // Our own state rides on every ack, so a prober that still suspects us at an incarnation we
  // have refuted learns of the refutation from us, even if its gossip passed the prober by.
  ack.updates.push_back(updateOf(self()));
  send(packet.from, std::move(ack), Channel::kDatagram);
}

void Membership::onPingReq(const Message& m, Time now) {
  std::uint32_t seq = next_seq_++;
  relays_[seq] = Relay{m.sender_address, m.seq, now + options_.timing.protocol_period};
  Message ping = message(MessageType::kPing);
  ping.seq = seq;
  ping.target_id = m.target_id;
  send(m.target_address, std::move(ping), Channel::kDatagram);
}

void Membership::onAck(const Message& m, Time /*now*/) {
  if (probe_ && probe_->seq == m.seq) {
    probe_.reset();
    return;
  }
  auto it = relays_.find(m.seq);
  if (it == relays_.end()) return;  // late or duplicate
  Message ack = message(MessageType::kAck);
  ack.seq = it->second.requester_seq;
  std::string to = it->second.requester_address;
  relays_.erase(it);
  send(to, std::move(ack), Channel::kDatagram);
}

void Membership::onPushPull(const Message& m, Time now) {
  for (const Update& u : m.members) applyRemote(u, m.sender_id, now);
  if (m.reply) return;
  Message reply = message(MessageType::kPushPull);
  reply.reply = true;
  reply.members = fullState();
  send(m.sender_address, std::move(reply), Channel::kStream);
}

// ---- state changes -----------------------------------------------------------------------------

void Membership::applyRemote(Update u, const std::string& sender, Time now) {
  // Another node's "dead" is taken as a suspicion of our own (a confirmation if we already
  // suspect): we may still reach the node, and only our own suspicion running out declares it
  // dead here. A node cut off by a partition declares everyone on the other side dead and keeps
  // that news queued; taken as is after the heal, it would kill healthy members among the
  // majority, which can reach them. As a suspicion it reaches its subject, which refutes it.
  // "Left" is the node's own word and is taken as is.
  if (u.state == MemberState::kDead) {
    u.state = MemberState::kSuspect;
    if (u.from.empty()) u.from = sender;
  }
  apply(u, now);
}

void Membership::apply(const Update& u, Time now) {
  switch (u.state) {
    case MemberState::kAlive:
      applyAlive(u, now);
      break;
    case MemberState::kSuspect:
      applySuspect(u, now);
      break;
    case MemberState::kDead:
    case MemberState::kLeft:
      applyDeadOrLeft(u, now);
      break;
  }
}

void Membership::applyAlive(const Update& u, Time now) {
  if (u.id == options_.id) {
    // Someone has a newer incarnation of us than we do (we restarted): outbid it.
    if (u.incarnation > self().incarnation && !leaving_) refute(u.incarnation, now);
    return;
  }
  auto it = members_.find(u.id);
  if (it == members_.end()) {
    if (members_.size() >= options_.max_members) {
      ++counters_.dropped_member_cap;
      return;
    }
    Member m{u.id, u.address, u.meta, u.incarnation, MemberState::kAlive, now};
    members_.emplace(m.id, m);
    // A newcomer goes to a random place in the probe order, so it is probed within a round.
    std::uniform_int_distribution<std::size_t> pos(probe_index_, probe_order_.size());
    probe_order_.insert(probe_order_.begin() + static_cast<std::ptrdiff_t>(pos(rng_)), m.id);
    emit(EventType::kJoined, m);
    broadcasts_.enqueue(u);
    return;
  }
  Member& m = it->second;
  if (u.incarnation <= m.incarnation) return;
  bool was_live = isLive(m.state);
  bool changed = m.address != u.address || !(m.meta == u.meta) || m.state != MemberState::kAlive;
  m.address = u.address;
  m.meta = u.meta;
  m.incarnation = u.incarnation;
  suspicions_.erase(m.id);
  if (m.state != MemberState::kAlive) setState(m, MemberState::kAlive, now);
  if (!was_live) {
    emit(EventType::kJoined, m);
  } else if (changed) {
    emit(EventType::kUpdated, m);
  }
  broadcasts_.enqueue(u);
}

void Membership::applySuspect(const Update& u, Time now) {
  if (u.id == options_.id) {
    if (!leaving_ && u.incarnation >= self().incarnation) refute(u.incarnation, now);
    return;
  }
  auto it = members_.find(u.id);
  if (it == members_.end()) return;
  Member& m = it->second;
  if (u.incarnation < m.incarnation || !isLive(m.state)) return;
  if (m.state == MemberState::kSuspect && u.incarnation == m.incarnation) {
    auto s = suspicions_.find(m.id);
    if (s != suspicions_.end() && s->second.confirm(u.from)) broadcasts_.enqueue(u);
    return;
  }
  m.incarnation = u.incarnation;
  setState(m, MemberState::kSuspect, now);
  const Timing& t = options_.timing;
  std::size_t n = liveCount();
  Duration min = suspicionTimeout(t.suspicion_mult, n, t.protocol_period);
  // Lifeguard: expect suspicion_mult - 2 confirmations, if there are enough other members.
  int k = t.suspicion_mult - 2;
  if (n < static_cast<std::size_t>(k) + 2) k = 0;
  suspicions_.erase(m.id);
  suspicions_.emplace(m.id, Suspicion(now, min, min * t.suspicion_max_mult, k, u.from));
  if (u.from != options_.id) {
    // Heard from another node: probe the member next, rather than whenever the round-robin gets
    // to it, so that a live member's refutation reaches us through its ack before the suspicion
    // runs out (the timeout can be shorter than a round of probes).
    probe_order_.insert(probe_order_.begin() + static_cast<std::ptrdiff_t>(probe_index_), m.id);
  }
  emit(EventType::kSuspect, m);
  broadcasts_.enqueue(u);
}

void Membership::applyDeadOrLeft(const Update& u, Time now) {
  if (u.id == options_.id) {
    // Only we may say we left; anyone saying we are dead is wrong while we can say so.
    if (!leaving_ && u.incarnation >= self().incarnation) refute(u.incarnation, now);
    return;
  }
  auto it = members_.find(u.id);
  // A node we never knew (or have reaped): nothing to change. Not recorded, so that reaped
  // tombstones cannot bounce back and forth between nodes through push/pull forever.
  if (it == members_.end()) return;
  Member& m = it->second;
  if (u.incarnation < m.incarnation || !isLive(m.state)) {
    // Dead can still turn into left (the node said goodbye later than we gave up on it).
    if (!(m.state == MemberState::kDead && u.state == MemberState::kLeft &&
          u.incarnation >= m.incarnation)) {
      return;
    }
  }
  m.incarnation = u.incarnation;
  suspicions_.erase(m.id);
  setState(m, u.state, now);
  emit(u.state == MemberState::kLeft ? EventType::kLeft : EventType::kDead, m);
  broadcasts_.enqueue(u);
}

void Membership::refute(std::uint64_t seen_incarnation, Time now) {
  Member& me = members_.at(options_.id);
  // Saturates: an incarnation of 2^64-1 (only a forged update can carry it) must not wrap this
  // node to 0, where every other node would take it for older than anything.
  const std::uint64_t seen = std::max(me.incarnation, seen_incarnation);
  me.incarnation = seen == std::numeric_limits<std::uint64_t>::max() ? seen : seen + 1;
  setState(me, MemberState::kAlive, now);
  ++counters_.refutations;
  broadcasts_.enqueue(updateOf(me));
}

void Membership::setState(Member& m, MemberState state, Time now) {
  if (m.state == state) return;
  m.state = state;
  m.state_since = now;
}

// ---- output and helpers ------------------------------------------------------------------------

Message Membership::message(MessageType type) const {
  Message m;
  m.sender_id = options_.id;
  m.sender_address = options_.address;
  m.type = type;
  return m;
}

void Membership::send(const std::string& to, Message m, Channel channel) {
  if (channel == Channel::kDatagram) {
    // Piggy-back what fits; the rest waits for the next packet or gossip round.
    std::size_t used = 96 + (security().keyed() ? kAuthBytes + 16 : 0) + m.sender_id.size() +
                       m.sender_address.size() + m.target_id.size() + m.target_address.size() +
                       options_.cluster.size();
    for (const Update& u : m.updates) used += estimatedSize(u);  // set by the caller: first
    std::size_t budget =
        options_.timing.max_datagram_bytes > used ? options_.timing.max_datagram_bytes - used : 0;
    auto queued =
        broadcasts_.take(budget, retransmitLimit(options_.timing.retransmit_mult, liveCount()));
    m.updates.insert(m.updates.end(), std::make_move_iterator(queued.begin()),
                     std::make_move_iterator(queued.end()));
  }
  auto bytes = encode(m, options_.cluster, security());
  if (bytes.empty()) return;  // sealing failed (OpenSSL); never sent in the clear
  ++counters_.packets_sent;
  counters_.bytes_sent += bytes.size();
  transport_.send(to, channel, std::move(bytes));
}

Update Membership::updateOf(const Member& m) const {
  Update u;
  u.state = m.state;
  u.id = m.id;
  u.address = m.address;
  u.incarnation = m.incarnation;
  u.meta = m.meta;
  return u;
}

std::vector<Update> Membership::fullState() const {
  std::vector<Update> out;
  out.reserve(members_.size());
  for (const auto& [id, m] : members_) out.push_back(updateOf(m));
  return out;
}

std::vector<const Member*> Membership::randomMembers(std::size_t k, const std::string& exclude,
                                                     Pick pick, Time now) {
  std::vector<const Member*> candidates;
  for (const auto& [id, m] : members_) {
    if (id == options_.id || id == exclude) continue;
    if (wanted(m, pick, now)) candidates.push_back(&m);
  }
  std::shuffle(candidates.begin(), candidates.end(), rng_);
  if (candidates.size() > k) candidates.resize(k);
  return candidates;
}

bool Membership::wanted(const Member& m, Pick pick, Time now) const {
  switch (pick) {
    case Pick::kAlive:
      return m.state == MemberState::kAlive;
    case Pick::kLive:
      return isLive(m.state);
    case Pick::kDead:
      return m.state == MemberState::kDead;
    case Pick::kGossip:
      return isLive(m.state) || (m.state == MemberState::kDead &&
                                 now - m.state_since < options_.timing.gossip_to_the_dead);
  }
  return false;
}

std::size_t Membership::liveCount() const {
  std::size_t n = 0;
  for (const auto& [id, m] : members_) n += isLive(m.state) ? 1u : 0u;
  return n;
}

std::vector<Member> Membership::members() const {
  std::vector<Member> out;
  for (const auto& [id, m] : members_) out.push_back(m);
  return out;
}

std::optional<Member> Membership::member(const std::string& id) const {
  auto it = members_.find(id);
  if (it == members_.end()) return std::nullopt;
  return it->second;
}

std::size_t Membership::count(MemberState state) const {
  std::size_t n = 0;
  for (const auto& [id, m] : members_) n += m.state == state ? 1u : 0u;
  return n;
}

}  // namespace throttlex::gossip
