// SWIM membership with the Lifeguard refinements, as a deterministic state machine.
//
// The owner drives it: tick(now) at least every few milliseconds (a timer), receive(packet, now)
// for every packet the transport delivers, and takeEvents() to learn about changes. It never
// reads a clock, sleeps, starts threads or touches sockets: time comes in as arguments, packets go
// out through the injected Transport, randomness comes from the seed in Options.
//
// Thread safety: none; one thread (the gossip event loop) owns an instance. Nothing here blocks.
//
// Protocol (docs/gossip.md has the whole story):
//  - each protocol period, ping the next member of a shuffled round-robin list; no ack within
//    probe_timeout → ping-req through `indirect_checks` members; no ack by the end of the period →
//    suspect it (broadcast); suspicion → dead after a timeout that scales with log10(n) and
//    shrinks with independent confirmations; a suspected node refutes by raising its incarnation;
//  - updates are piggy-backed on every datagram and gossiped to a few random members, each sent at
//    most retransmit_mult * ceil(log10(n+1)) times;
//  - join = push/pull of full state with a seed; a periodic push/pull with a random member (and
//    one with a dead member, to notice healed partitions) repairs whatever gossip missed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gossip/broadcast_queue.h"
#include "gossip/codec.h"
#include "gossip/keyring.h"
#include "gossip/member.h"
#include "gossip/message.h"
#include "gossip/suspicion.h"
#include "gossip/timing.h"
#include "gossip/transport.h"
#include "limiter/result.h"

namespace throttlex::gossip {

struct Options {
  std::string cluster;  // packets of other clusters are dropped and counted
  std::string id;       // this node's unique id
  std::string address;  // this node's gossip "host:port" (what peers send to)
  NodeMeta meta;
  Timing timing = Timing::lan();
  std::uint64_t seed = 0;  // the only source of randomness
  // Members known at most (this node included); news of more is dropped and counted, so a flood
  // of invented members cannot grow the table or the ring without bound.
  std::size_t max_members = 1024;
  // The cluster keyring (gossip/keyring.h), shared with whoever rotates keys; null or empty: plain
  // packets. The switches are for turning keys on in a running cluster (see gossip/codec.h).
  std::shared_ptr<const Keyring> keyring;
  bool verify_incoming = true;
  bool verify_outgoing = true;
};

struct Counters {
  std::uint64_t packets_sent = 0;
  std::uint64_t bytes_sent = 0;
  std::uint64_t packets_received = 0;
  std::uint64_t dropped_malformed = 0;  // undecodable, too large, unknown type
  std::uint64_t dropped_foreign_cluster = 0;
  std::uint64_t dropped_version = 0;
  std::uint64_t dropped_misdirected = 0;      // a ping for another node id
  std::uint64_t dropped_member_cap = 0;       // news of a new member while max_members are known
  std::uint64_t dropped_unauthenticated = 0;  // not sealed, or not by a key we hold
  std::uint64_t probes = 0;
  std::uint64_t indirect_probes = 0;
  std::uint64_t probe_failures = 0;  // probes that ended in a suspicion
  std::uint64_t refutations = 0;
  std::uint64_t push_pulls = 0;
};

// Checks what the protocol needs of Options: non-empty cluster, id and address, sane timing.
Status validate(const Options& options);

class Membership {
 public:
  // Validates `options` and builds a Membership; `transport` must outlive it.
  static Result<std::unique_ptr<Membership>> create(Options options, Transport& transport,
                                                    Time now);
  // Starts alive as the only member, incarnation 1. Options must be valid (validate()).
  Membership(Options options, Transport& transport, Time now);

  // Sends a join (push/pull of full state) to every seed; resent with backoff from tick() until
  // another member is known. Seeds equal to our own address are ignored.
  void join(const std::vector<std::string>& seeds, Time now);
  // Marks this node left (a higher incarnation) and spreads it; keep ticking for a few gossip
  // intervals so it gets out, then stop. Probing stops; acks are still answered.
  void leave(Time now);
  // New metadata (e.g. an address changed): a higher incarnation, spread like any alive update.
  void updateMeta(NodeMeta meta, Time now);

  void tick(Time now);
  void receive(const Packet& packet, Time now);

  // Events since the last call, oldest first.
  std::vector<Event> takeEvents();

  std::vector<Member> members() const;  // including this node, ordered by id
  std::optional<Member> member(const std::string& id) const;
  std::size_t count(MemberState state) const;
  const Member& self() const { return members_.at(options_.id); }
  const Counters& counters() const { return counters_; }
  const Options& options() const { return options_; }

 private:
  Security security() const {
    return {options_.keyring.get(), options_.verify_incoming, options_.verify_outgoing};
  }
  struct Probe {
    std::string target;
    std::uint32_t seq = 0;
    Time started{};
    bool indirect_sent = false;
  };
  struct Relay {  // a ping we send for someone else's ping-req
    std::string requester_address;
    std::uint32_t requester_seq = 0;
    Time expires{};
  };

  // Protocol steps.
  void probeTick(Time now);
  void startProbe(Time now);
  void probeFailed(Time now);
  void gossipTick(Time now);
  void pushPullTick(Time now);
  void checkSuspicions(Time now);
  void reap(Time now);

  // Message handlers.
  void handle(const Message& m, const Packet& packet, Time now);
  void onPing(const Message& m, const Packet& packet, Time now);
  void onPingReq(const Message& m, Time now);
  void onAck(const Message& m, Time now);
  void onPushPull(const Message& m, Time now);

  // State changes; each applies one update and re-broadcasts it if it was news.
  void apply(const Update& u, Time now);
  void applyAlive(const Update& u, Time now);
  void applyRemote(Update u, const std::string& sender, Time now);
  void applySuspect(const Update& u, Time now);
  void applyDeadOrLeft(const Update& u, Time now);
  void refute(std::uint64_t seen_incarnation, Time now);
  void setState(Member& m, MemberState state, Time now);

  // Output.
  void send(const std::string& to, Message m, Channel channel);
  Message message(MessageType type) const;
  std::vector<Update> fullState() const;
  Update updateOf(const Member& m) const;
  // kLive = alive or suspect; kGossip = live or dead for less than gossip_to_the_dead.
  enum class Pick : std::uint8_t { kAlive, kLive, kDead, kGossip };
  std::vector<const Member*> randomMembers(std::size_t k, const std::string& exclude, Pick pick,
                                           Time now);
  bool wanted(const Member& m, Pick pick, Time now) const;
  void emit(EventType type, const Member& m) { events_.push_back(Event{type, m}); }
  std::size_t liveCount() const;  // alive + suspect, including this node

  // Constant after construction.
  Options options_;  // constant after construction, except meta (updateMeta())
  Transport& transport_;

  std::mt19937_64 rng_;
  std::map<std::string, Member> members_;  // by id, including this node
  std::map<std::string, Suspicion> suspicions_;
  BroadcastQueue broadcasts_;
  std::vector<Event> events_;
  Counters counters_;
  bool leaving_ = false;

  std::vector<std::string> probe_order_;
  std::size_t probe_index_ = 0;
  std::optional<Probe> probe_;
  std::map<std::uint32_t, Relay> relays_;
  std::uint32_t next_seq_ = 1;

  std::vector<std::string> seeds_;
  Duration join_backoff_{};
  Time next_join_at_{};
  Time next_probe_at_;
  Time next_gossip_at_;
  Time next_push_pull_at_;
};

}  // namespace throttlex::gossip
