#include "daemon/routing/forwarder.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>
#include <kj/timer.h>

#include <algorithm>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "daemon/base/log.h"
#include "daemon/routing/slot_gate.h"
#include "daemon/routing/wire.h"
#include "limiter/mutex.h"
#include "proto/node_connection.h"
#include "proto/throttlex.capnp.h"

namespace throttlex {
namespace {

kj::Duration toKj(std::chrono::milliseconds ms) {
  return ms.count() * kj::MILLISECONDS;
}
// Counters are shared by the loops of all threads.
void bump(std::atomic<std::uint64_t>& c, std::uint64_t by = 1) {
  c.fetch_add(by, std::memory_order_relaxed);
}

// Failures that say "this peer cannot answer now" (connection lost, deadline). Anything else is
// a bug on one side; the checks are still answered (degraded) rather than failed.
std::string describe(const kj::Exception& e) {
  if (e.getType() == kj::Exception::Type::OVERLOADED) return "no answer in time";
  return std::string(e.getDescription().cStr());
}

struct Item {
  ForwardedCheck check;
  std::size_t index = 0;
  std::shared_ptr<ForwardSink> sink;
  std::uint8_t hops = 0;
  int attempts = 0;       // owners that failed this check
  int not_decided = 0;    // owners that answered kNotDecided for it (it came up too late there)
  bool standin = false;   // sent to the slot's runner-up because its owner is unreachable
  bool handover = false;  // sent to the slot's runner-up because this node handed it over (drain)
};

struct Submission {
  std::vector<ForwardedCheck> checks;
  std::vector<std::size_t> indices;
  std::shared_ptr<ForwardSink> sink;
  std::uint8_t hops = 0;
  std::int64_t decide_by_ms = 0;
};

// A check answered kNotDecided this many times (each after waiting out a decide-by time at a
// live owner) is decided by the degraded policy instead of being sent again.
constexpr int kMaxNotDecided = 4;

}  // namespace

ForwardedCheck ForwardedCheck::from(const CheckArgs& args, std::uint32_t slot) {
  ForwardedCheck c{std::string(args.key), std::string(args.rule), args.limit, args.hits, slot};
  c.refund = args.refund;
  c.release = args.release;
  c.renew = args.renew;
  c.priority = args.priority;
  c.deadline = args.deadline;
  return c;
}

CheckArgs ForwardedCheck::args() const {
  CheckArgs a;
  a.key = key;
  a.rule = rule;
  a.limit = limit;
  a.hits = hits;
  a.refund = refund;
  a.release = release;
  a.renew = renew;
  a.priority = priority;
  a.deadline = deadline;
  return a;
}

std::string_view nameOf(BreakerState s) {
  switch (s) {
    case BreakerState::kClosed:
      return "closed";
    case BreakerState::kOpen:
      return "open";
    case BreakerState::kHalfOpen:
      return "half_open";
  }
  return "closed";
}

// Statistics of one peer, written by every loop that forwards to it, read by scrapes. The breaker
// gauge shows the state the last loop to change it set.
struct PeerCounters {
  std::string node_id;
  std::string address;  // read and written under Impl::stats_mu
  std::atomic<std::uint8_t> breaker{0};
  std::atomic<std::uint64_t> calls{0}, checks{0}, failures{0}, opens{0};
};

// Parked checks come back here (Rerouter) when the forwarder parked them: routed again by the
// calling thread's loop, or the forwarder thread's.
struct Forwarder::Impl final : Rerouter {
  Impl(const ForwarderOptions& o, LimiterService& s, const RingHolder& r, SlotGate* k)
      : options(o),
        service(s),
        ring(r),
        keeper(k),
        event_fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~Impl() {
    if (event_fd >= 0) ::close(event_fd);
  }

  void run(std::promise<void> ready);
  // Forwarder::submit(): to the calling thread's loop, else handed to the forwarder thread.
  void submit(Submission s);
  void reroute(ForwardedCheck check, std::size_t index, std::shared_ptr<ForwardSink> sink,
               std::uint8_t hops) override {
    const std::int64_t decide_by = check.decide_by_ms;
    std::vector<ForwardedCheck> one;
    one.push_back(std::move(check));
    submit({std::move(one), {index}, std::move(sink), hops, decide_by});
  }
  // Decides on the calling thread: locally when this node owns the key, else degraded.
  void decideHere(const ForwardedCheck& c, std::size_t index, ForwardSink& sink);
  void wake() {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(event_fd, &one, sizeof one);
  }

  const ForwarderOptions options;
  LimiterService& service;
  const RingHolder& ring;
  SlotGate* const keeper;  // null: every slot is open
  const int event_fd;
  std::thread thread;

  Mutex mu;
  std::vector<Submission> inbox GUARDED_BY(mu);
  bool wake_pending GUARDED_BY(mu) = false;
  bool closed GUARDED_BY(mu) = false;
  mutable Mutex stats_mu;
  std::map<std::string, std::unique_ptr<PeerCounters>> counters
      GUARDED_BY(stats_mu);  // never shrinks
  std::atomic<std::uint64_t> degraded{0}, standin{0}, rerouted{0}, not_decided{0}, silences{0},
      handoffs{0}, batch_size_sum{0}, latency_ns_sum{0};
  std::array<std::atomic<std::uint64_t>, kBatchSizeBounds.size() + 1> batch_sizes{};
  std::array<std::atomic<std::uint64_t>, kForwardLatencyBounds.size() + 1> latency{};

  PeerCounters& countersFor(const std::string& id, const std::string& address) {
    MutexLock guard(stats_mu);
    auto& c = counters[id];
    if (!c) {
      c = std::make_unique<PeerCounters>();
      c->node_id = id;
    }
    c->address = address;
    return *c;
  }
};

namespace {

// One thread's forwarding: its peers, their connections, breakers and batches, on the thread's
// KJ event loop.
class Loop {
 public:
  Loop(Forwarder::Impl& impl, kj::Timer& timer, PeerConnector connect)
      : impl_(impl),
        opt_(impl.options),
        connect_(std::move(connect)),
        timer_(timer),
        rng_(std::random_device{}()),
        tls_(opt_.tls, false),
        tasks_(log_errors_) {
    reader_options_.traversalLimitInWords = opt_.traversal_limit_words;
    reader_options_.nestingLimit = 16;
    last_tick_ = timer_.now();
    tasks_.add(tick());
  }
  ~Loop() { shutdown(); }

  // Routes a submission made on this loop's thread.
  void submit(Submission s) {
    for (std::size_t i = 0; i < s.checks.size(); ++i) {
      if (s.decide_by_ms != 0) s.checks[i].decide_by_ms = s.decide_by_ms;
      route(Item{std::move(s.checks[i]), s.indices[i], s.sink, s.hops, 0});
    }
  }

  // Runs submissions handed over from other threads until the inbox closes.
  kj::Promise<void> serve(kj::UnixEventPort::FdObserver& observer) {
    if (drain()) return kj::READY_NOW;
    return observer.whenBecomesReadable().then([this, &observer] { return serve(observer); });
  }

  // Completes everything still pending: queued checks at once, in-flight ones when their
  // canceled calls come back (the caller polls the loop once more).
  void shutdown() {
    closing_ = true;
    for (auto& [id, peer] : peers_) {
      auto queued = std::move(peer->queue);
      peer->queue.clear();
      peer->relayed_queued = 0;
      for (Item& item : queued) degrade(item);
      closeConnection(*peer, "the node is shutting down");
    }
  }

 private:
  using Connection = proto::NodeConnection;

  struct Peer {
    std::string id;
    std::string address;
    PeerCounters* counters = nullptr;
    kj::Own<Connection> conn;  // null while not connected
    bool connecting = false;
    bool heartbeat_in_flight = false;
    // When the peer last answered anything (a batch, a heartbeat), on this loop's clock; moved
    // on by stalls of this loop (its own silence is not the peer's).
    kj::TimePoint last_answer = kj::origin<kj::TimePoint>();
    bool flush_scheduled = false;
    std::uint64_t generation = 0;  // bumped when the connection is dropped; stale callbacks see it
    std::size_t in_flight = 0;
    std::deque<Item> queue;
    std::size_t relayed_queued = 0;  // items in `queue` with hops (an upper bound)
    BreakerState breaker = BreakerState::kClosed;
    kj::TimePoint open_until = kj::origin<kj::TimePoint>();
    kj::Duration cooldown = 0 * kj::MILLISECONDS;
    kj::Canceler canceler;
  };

  struct Batch {
    Peer* peer;
    std::uint64_t generation;
    std::vector<Item> items;
    Instant sent;  // on the injected clock's monotonic reading
  };

  bool drain() {
    std::uint64_t value = 0;
    while (::read(impl_.event_fd, &value, sizeof value) == static_cast<ssize_t>(sizeof value)) {
    }
    std::vector<Submission> work;
    bool closed = false;
    {
      MutexLock guard(impl_.mu);
      work.swap(impl_.inbox);
      impl_.wake_pending = false;
      closed = impl_.closed;
    }
    for (Submission& s : work) submit(std::move(s));
    return closed;
  }

  void deliver(Item& item, Result<CheckOutcome> outcome) {
    item.sink->deliver(item.index, std::move(outcome));
  }

  void degrade(Item& item) {
    const std::shared_ptr<const RingView> view = impl_.ring.current();  // kept for this call
    bump(impl_.degraded);
    deliver(item, impl_.service.checkDegraded(item.check.args(), view ? view->alive() : 1));
  }

  void route(Item item) {
    const std::shared_ptr<const RingView> view = impl_.ring.current();  // kept for this call
    const std::uint32_t owner = view ? view->peerFor(item.check.slot) : RingView::kNoPeer;
    if (closing_) {  // shutting down: nothing is sent any more
      degrade(item);
      return;
    }
    if (pastDecideBy(item.check.decide_by_ms, impl_.service.clock())) {
      // The node that sent it here may have had it decided elsewhere by now.
      deliver(item,
              Error{ErrorCode::kNotDecided, "its decide-by time passed before it was sent on"});
      return;
    }
    SlotGate* keeper = impl_.keeper;
    Quiescence::Guard guard(keeper != nullptr ? &keeper->quiescence() : nullptr);
    const std::uint32_t slot = item.check.slot;
    RouteFacts facts;
    facts.hops = item.hops;
    facts.gate = keeper != nullptr;
    facts.forwarder = view != nullptr;  // no ring yet: nowhere to send it
    facts.mode = keeper != nullptr ? keeper->mode(slot) : SlotMode::kOpen;
    facts.owned_elsewhere = owner != RingView::kNoPeer;
    facts.stand_in = item.standin;
    facts.handed_over =
        facts.gate && item.hops > kMaxHops && facts.owned_elsewhere && keeper->handedOver(slot);
    Peer* peer = nullptr;
    if (facts.owned_elsewhere) {
      peer = &peerOf(view->ring.members()[owner], view->rpc_address[owner]);
      facts.owner_down = !usable(*peer);
    }
    const RouteStep step = routeStep(facts);
    switch (step) {
      case RouteStep::kPark:
        keeper->park(std::move(item.check), item.index, std::move(item.sink), item.hops, impl_);
        return;
      case RouteStep::kDecideStandIn:
        if (keeper->standInNeedsRecovery(slot)) {
          keeper->park(std::move(item.check), item.index, std::move(item.sink), item.hops, impl_);
          return;
        }
        [[fallthrough]];
      case RouteStep::kDecide:
        deliver(item, impl_.service.check(item.check.args()));
        return;
      case RouteStep::kHandOver:
        handOver(std::move(item), *view, facts.mode);  // the runner-up (or proxied owner)
        return;
      case RouteStep::kOwner:
      case RouteStep::kStandIn:
        break;
    }
    if (item.attempts >= opt_.max_attempts) {
      degrade(item);
      return;
    }
    if (step == RouteStep::kStandIn) {
      standIn(std::move(item), *view, owner);
      return;
    }
    enqueue(*peer, std::move(item));
  }

  // Whether checks go to the peer: only while its breaker is closed. After the cooldown an open
  // breaker goes half-open: heartbeats probe the peer, and the first one answered closes it.
  // Checks keep going to the stand-in meanwhile, so a peer that is still down costs them no T.
  bool usable(Peer& peer) {
    if (peer.breaker == BreakerState::kClosed) return true;
    if (peer.breaker == BreakerState::kOpen && timer_.now() >= peer.open_until) {
      setBreaker(peer, BreakerState::kHalfOpen, "probing");
      peer.last_answer = timer_.now();  // the probe gets a full T
    }
    return false;
  }

  // Every `heartbeat`: account for a stall of this loop, find silent peers, send heartbeats.
  kj::Promise<void> tick() {
    return timer_.afterDelay(toKj(opt_.heartbeat)).then([this]() -> kj::Promise<void> {
      if (closing_) return kj::READY_NOW;
      onTick();
      return tick();
    });
  }

  void onTick() {
    const kj::TimePoint now = timer_.now();
    forgiveOwnStall(now);
    const std::shared_ptr<const RingView> view = impl_.ring.current();  // kept for this call
    if (!view) return;
    const auto& members = view->ring.members();
    for (std::uint32_t i = 0; i < members.size(); ++i) {
      if (i == view->self) continue;
      Peer& peer = peerOf(members[i], view->rpc_address[i]);
      if (silent(peer, now)) {
        bump(impl_.silences);
        failed(peer, "no answer for " + std::to_string(opt_.owner_silence.count()) + " ms");
        continue;
      }
      usable(peer);  // an open breaker goes half-open after its cooldown
      if (peer.breaker == BreakerState::kOpen) continue;
      if (!peer.conn) {
        connect(peer);
      } else if (!peer.heartbeat_in_flight && !heardWithin(peer, now, toKj(opt_.heartbeat))) {
        heartbeat(peer);  // under load, answers to batches stand in for heartbeats
      }
    }
  }

  // This loop did not run for a while (the process was stopped, or starved of CPU): answers may
  // be waiting unread, so the time it lost does not count as any peer's silence.
  void forgiveOwnStall(kj::TimePoint now) {
    const kj::Duration gap = now - last_tick_;
    last_tick_ = now;
    const kj::Duration h = toKj(opt_.heartbeat);
    if (gap <= 4 * h) return;
    for (auto& [id, peer] : peers_) peer->last_answer = std::min(now, peer->last_answer + gap - h);
  }

  // An open or half-open breaker always probes: its answers close it.
  bool heardWithin(const Peer& peer, kj::TimePoint now, kj::Duration d) const {
    return peer.breaker == BreakerState::kClosed && now - peer.last_answer < d;
  }

  // Waiting for the peer (a call, a heartbeat, a connect, queued checks) and nothing heard for T.
  bool silent(const Peer& peer, kj::TimePoint now) const {
    if (peer.breaker == BreakerState::kOpen) return false;
    const bool waiting =
        peer.in_flight > 0 || peer.heartbeat_in_flight || peer.connecting || !peer.queue.empty();
    return waiting && now - peer.last_answer >= toKj(opt_.owner_silence);
  }

  // What is left of the time the peer may take to decide a batch sent now (see decideBy()).
  kj::Duration budget(const Peer& peer) const {
    return peer.last_answer + toKj(opt_.owner_silence) - toKj(opt_.decide_margin) - timer_.now();
  }

  // The wall-clock time after which the owner must decide none of a batch sent now: this node
  // gives up on the peer at (last answer + T) on its own clock at the earliest; the margin covers
  // the answer's way back and the clocks' offset. Never later than what the checks carry.
  std::int64_t decideBy(const Peer& peer, const std::vector<Item>& items) const {
    const std::int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                    impl_.service.clock().now().time_since_epoch())
                                    .count();
    std::int64_t by = now_ms + budget(peer) / kj::MILLISECONDS;
    for (const Item& item : items) {
      if (item.check.decide_by_ms != 0) by = std::min(by, item.check.decide_by_ms);
    }
    return by;
  }

  // Whether a batch sent now leaves the owner time to decide it; if not, checks wait for the
  // next answer (a heartbeat's) or for the peer to be found silent.
  bool sendable(const Peer& peer) const { return budget(peer) >= toKj(opt_.heartbeat); }

  void heartbeat(Peer& peer) {
    auto request = peer.conn->node.checkBatchRequest();
    request.setVersion(proto::PROTOCOL_VERSION);
    request.setHops(1);
    peer.heartbeat_in_flight = true;
    Peer* p = &peer;
    const std::uint64_t generation = peer.generation;
    tasks_.add(peer.canceler.wrap(request.send().ignoreResult())
                   .then(
                       [this, p, generation] {
                         if (generation != p->generation) return;
                         p->heartbeat_in_flight = false;
                         heard(*p);
                       },
                       [this, p, generation](kj::Exception&& e) {
                         if (generation != p->generation) return;
                         p->heartbeat_in_flight = false;
                         failed(*p, "heartbeat: " + describe(e));
                       }));
  }

  // The peer answered something: it is alive and deciding.
  void heard(Peer& peer) {
    peer.last_answer = timer_.now();
    if (peer.breaker != BreakerState::kClosed) {
      peer.cooldown = toKj(opt_.cooldown_min);
      setBreaker(peer, BreakerState::kClosed, "");
    }
    if (!peer.queue.empty()) flush(peer);
  }

  void enqueue(Peer& peer, Item item) {
    if (item.hops > 0) ++peer.relayed_queued;
    peer.queue.push_back(std::move(item));
    connect(peer);
    scheduleFlush(peer);
  }

  // The owner is unreachable: send the check to the slot's runner-up, the member that owns the
  // slot if the owner is declared dead. Every node picks the same one, so the key is still
  // decided in one place, with its full limit, and the state built meanwhile is where the slot
  // will move. Only if the runner-up is unreachable too does the rule's degraded policy decide.
  void standIn(Item item, const RingView& view, std::uint32_t owner) {
    const std::uint32_t runner = view.ring.runnerUpIndex(item.check.slot);
    if (item.standin || runner == owner) {
      degrade(item);
      return;
    }
    item.standin = true;
    // The stand-in must decide it, not pass it on to the owner it cannot reach either (that
    // would chain one timeout behind another): it arrives past the hop limit.
    item.hops = std::max<std::uint8_t>(item.hops, kMaxHops);
    bump(impl_.standin);
    if (runner == view.self) {
      SlotGate* keeper = impl_.keeper;
      if (keeper != nullptr && keeper->standInNeedsRecovery(item.check.slot)) {
        keeper->park(std::move(item.check), item.index, std::move(item.sink), item.hops, impl_);
        return;
      }
      Result<CheckOutcome> r = impl_.service.check(item.check.args());
      if (r) r->route = RouteKind::kDegraded;  // decided without the owner
      deliver(item, std::move(r));
      return;
    }
    Peer& peer = peerOf(view.ring.members()[runner], view.rpc_address[runner]);
    if (!usable(peer)) {
      degrade(item);
      return;
    }
    enqueue(peer, std::move(item));
  }

  // The slot's runner-up decides it (the check carries the hop limit): this node handed the slot
  // to it (drain), or it still decides a slot this node gained until it hands it over (proxy).
  void handOver(Item item, const RingView& view, SlotMode mode) {
    std::uint32_t runner = view.ring.runnerUpIndex(item.check.slot);
    if (mode == SlotMode::kProxy) {
      // To the member that still decides the slot (it was the runner-up when the slot was
      // gained; another join may have put a member in between since).
      SlotGate* keeper = impl_.keeper;
      const std::string from = keeper->proxyTarget(item.check.slot);
      const auto& members = view.ring.members();
      const auto it = std::find(members.begin(), members.end(), from);
      if (it == members.end()) {  // gone: the keeper reads the slot from Redis instead
        keeper->park(std::move(item.check), item.index, std::move(item.sink), item.hops, impl_);
        return;
      }
      runner = static_cast<std::uint32_t>(it - members.begin());
    }
    if (runner == view.self) {
      deliver(item, impl_.service.check(item.check.args()));
      return;
    }
    if (item.attempts >= opt_.max_attempts) {
      degrade(item);
      return;
    }
    item.handover = true;
    item.hops = std::max<std::uint8_t>(item.hops, kMaxHops - 1);
    Peer& peer = peerOf(view.ring.members()[runner], view.rpc_address[runner]);
    if (!usable(peer)) {
      degrade(item);
      return;
    }
    enqueue(peer, std::move(item));
  }

  // Whether a queued check still belongs on `peer`: its slot's owner, or, for a stand-in check,
  // the slot's runner-up (or its owner by now, once the old owner was declared dead).
  static bool belongsTo(const Item& item, const RingView* view, const Peer& peer) {
    if (view == nullptr) return false;
    if (item.handover) return true;  // to the runner-up this node chose; re-routed on failure
    const std::uint32_t owner = view->peerFor(item.check.slot);
    if (owner == RingView::kNoPeer) return false;
    if (view->ring.members()[owner] == peer.id) return true;
    return (item.standin || item.handover) &&
           view->ring.members()[view->ring.runnerUpIndex(item.check.slot)] == peer.id;
  }

  Peer& peerOf(const std::string& id, const std::string& address) {
    auto& slot = peers_[id];
    if (!slot) {
      slot = std::make_unique<Peer>();
      slot->id = id;
      slot->address = address;
      slot->cooldown = toKj(opt_.cooldown_min);
      slot->last_answer = timer_.now();
      slot->counters = &impl_.countersFor(id, address);
    } else if (slot->address != address) {  // the node came back elsewhere
      closeConnection(*slot, "address changed");
      slot->address = address;
      slot->counters = &impl_.countersFor(id, address);
    }
    return *slot;
  }

  void setBreaker(Peer& peer, BreakerState state, const std::string& why) {
    if (peer.breaker == state) return;
    const BreakerState before = peer.breaker;
    peer.breaker = state;
    peer.counters->breaker.store(static_cast<std::uint8_t>(state), std::memory_order_relaxed);
    if (state == BreakerState::kOpen) {
      bump(peer.counters->opens);
      logWarn("forwarding to " + peer.id + " (" + peer.address + "): breaker open for " +
              std::to_string((peer.open_until - timer_.now()) / kj::MILLISECONDS) + " ms: " + why);
    } else if (state == BreakerState::kClosed && before != BreakerState::kClosed) {
      logInfo("forwarding to " + peer.id + " (" + peer.address + "): breaker closed");
    }
  }

  void connect(Peer& peer) {
    if (peer.conn || peer.connecting || closing_) return;
    peer.connecting = true;
    const std::uint64_t generation = peer.generation;
    Peer* p = &peer;
    auto stream = proto::secureClient(connect_(peer.address), tls_.get());
    tasks_.add(peer.canceler.wrap(timer_.timeoutAfter(toKj(opt_.connect_timeout), kj::mv(stream)))
                   .then(
                       [this, p, generation](kj::Own<kj::AsyncIoStream> s) {
                         if (generation != p->generation) return;
                         p->connecting = false;
                         p->conn = kj::heap<Connection>(kj::mv(s), reader_options_);
                         watchDisconnect(*p);
                         flush(*p);
                       },
                       [this, p, generation](kj::Exception&& e) {
                         if (generation != p->generation) return;
                         if (e.getType() == kj::Exception::Type::OVERLOADED) {
                           // No answer to the connect (a partition, a full backlog): silence,
                           // which the ticks measure; the next tick tries again.
                           p->connecting = false;
                           return;
                         }
                         // Refused: no process listens there, so nobody decides its keys.
                         failed(*p, "connect failed: " + describe(e));
                       }));
  }

  void watchDisconnect(Peer& peer) {
    Peer* p = &peer;
    const std::uint64_t generation = peer.generation;
    tasks_.add(peer.canceler.wrap(peer.conn->network.onDisconnect())
                   .then(
                       [this, p, generation] {
                         if (generation != p->generation) return;
                         if (p->in_flight == 0) {
                           // Closed while idle (a restart, an idle timeout): nothing was lost;
                           // the next check reconnects.
                           closeConnection(*p, "connection closed");
                           if (!p->queue.empty()) connect(*p);
                           return;
                         }
                         failed(*p, "connection closed");
                       },
                       [](kj::Exception&&) {}));  // canceled: dropped already
  }

  void closeConnection(Peer& peer, const std::string& reason) {
    ++peer.generation;
    peer.connecting = false;
    peer.heartbeat_in_flight = false;
    peer.in_flight = 0;
    peer.canceler.cancel(kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                                       kj::str("peer ", peer.id.c_str(), ": ", reason.c_str())));
    // We may be inside a callback of this connection: destroy it on a later turn.
    if (peer.conn) tasks_.add(kj::evalLater([] {}).attach(kj::mv(peer.conn)));
  }

  // The peer failed a connect or a call: open its breaker and re-route what waited for it.
  void failed(Peer& peer, const std::string& why) {
    bump(peer.counters->failures);
    closeConnection(peer, why);
    if (peer.breaker == BreakerState::kHalfOpen) {  // the probe failed: back off further
      peer.cooldown = std::min(peer.cooldown * 2, toKj(opt_.cooldown_max));
    } else {
      peer.cooldown = toKj(opt_.cooldown_min);
    }
    // Jitter (0.8x to 1.2x): peers that lost the same node do not all probe it at once.
    std::uniform_int_distribution<std::int64_t> jitter(80, 120);
    peer.open_until = timer_.now() + peer.cooldown * jitter(rng_) / 100;
    setBreaker(peer, BreakerState::kOpen, why);
    auto waiting = std::move(peer.queue);
    peer.queue.clear();
    peer.relayed_queued = 0;
    for (Item& item : waiting) reroute(std::move(item));
  }

  void reroute(Item item) {
    ++item.attempts;
    bump(impl_.rerouted);
    route(std::move(item));
  }

  // The owner did not decide it (it came up there after its decide-by time): nothing was spent,
  // so it is routed again, now with a fresh decide-by time.
  void notDecided(Item item) {
    bump(impl_.not_decided);
    if (++item.not_decided > kMaxNotDecided) {
      degrade(item);
      return;
    }
    route(std::move(item));
  }

  void scheduleFlush(Peer& peer) {
    if (!peer.conn || peer.flush_scheduled) return;
    // Later in this turn of the loop, so that everything routed now leaves together.
    peer.flush_scheduled = true;
    Peer* p = &peer;
    tasks_.add(kj::evalLater([this, p] {
      p->flush_scheduled = false;
      flush(*p);
    }));
  }

  void flush(Peer& peer) {
    if (!peer.conn || !sendable(peer)) return;
    std::vector<Item> moved;  // slots that changed owner while queued
    if (peer.in_flight > 0 && peer.relayed_queued > 0 && peer.breaker == BreakerState::kClosed) {
      sendRelayed(peer, moved);
    }
    while (!peer.queue.empty() &&
           (peer.in_flight == 0 ||
            (peer.queue.size() >= opt_.max_batch && peer.breaker == BreakerState::kClosed))) {
      const std::shared_ptr<const RingView> view = impl_.ring.current();  // kept for this call
      std::vector<Item> batch;
      batch.reserve(std::min(peer.queue.size(), opt_.max_batch));
      const Instant now = impl_.service.clock().monotonic();
      while (!peer.queue.empty() && batch.size() < opt_.max_batch) {
        Item item = std::move(peer.queue.front());
        peer.queue.pop_front();
        if (item.check.deadline && now > *item.check.deadline) {
          // Its caller has given up on it: not sent, answered as shed (docs/overload.md).
          auto o = impl_.service.shedOutcome(item.check.args(), ShedReason::kDeadline);
          if (o) o->priority = item.check.priority;
          deliver(item, std::move(o));
        } else if (belongsTo(item, view.get(), peer)) {
          batch.push_back(std::move(item));
        } else {
          moved.push_back(std::move(item));
        }
      }
      if (!batch.empty()) send(peer, std::move(batch));
    }
    if (peer.queue.empty()) peer.relayed_queued = 0;
    for (Item& item : moved) {
      bump(impl_.rerouted);
      route(std::move(item));
    }
  }

  // Checks with hops (relayed from another node, or sent on past the hop limit) leave at once,
  // in batches of their own, even while a batch is in flight: held behind it they could wait on
  // each other in a cycle (this node's batch waits for the peer, whose relay back here waits
  // for this node's relay to the peer, queued behind that batch) until the call deadline. They
  // are rare: ring changes and handoffs.
  void sendRelayed(Peer& peer, std::vector<Item>& moved) {
    const std::shared_ptr<const RingView> view = impl_.ring.current();  // kept for this call
    std::map<std::uint8_t, std::vector<Item>> by_hops;
    std::deque<Item> rest;
    for (Item& item : peer.queue) {
      if (item.hops == 0) {
        rest.push_back(std::move(item));
      } else if (belongsTo(item, view.get(), peer)) {
        by_hops[item.hops].push_back(std::move(item));
      } else {
        moved.push_back(std::move(item));
      }
    }
    peer.queue.swap(rest);
    peer.relayed_queued = 0;
    for (auto& entry : by_hops) {
      std::vector<Item>& items = entry.second;
      for (std::size_t first = 0; first < items.size(); first += opt_.max_batch) {
        const std::size_t end = std::min(items.size(), first + opt_.max_batch);
        const auto at = [&](std::size_t i) {
          return std::make_move_iterator(items.begin() + static_cast<std::ptrdiff_t>(i));
        };
        send(peer, std::vector<Item>(at(first), at(end)));
      }
    }
  }

  void send(Peer& peer, std::vector<Item> items) {
    auto request = peer.conn->node.checkBatchRequest();
    request.setVersion(proto::PROTOCOL_VERSION);
    std::uint8_t hops = 0;
    auto list = request.initChecks(static_cast<unsigned>(items.size()));
    for (std::size_t i = 0; i < items.size(); ++i) {
      encode(items[i].check.args(), list[static_cast<unsigned>(i)]);
      hops = std::max(hops, items[i].hops);
    }
    request.setHops(static_cast<std::uint8_t>(hops + 1));
    request.setDecideByMs(decideBy(peer, items));
    ++peer.in_flight;
    bump(peer.counters->calls);
    bump(peer.counters->checks, items.size());
    recordBatchSize(items.size());

    auto batch = kj::heap<Batch>(
        Batch{&peer, peer.generation, std::move(items), impl_.service.clock().monotonic()});
    Batch& b = *batch;
    kj::Promise<capnp::Response<proto::Limiter::CheckBatchResults>> call = request.send();
    tasks_.add(peer.canceler
                   // A backstop only: silence (ticks) gives up on a peer long before.
                   .wrap(timer_.timeoutAfter(20 * toKj(opt_.owner_silence), kj::mv(call)))
                   .then(
                       [this, &b](capnp::Response<proto::Limiter::CheckBatchResults>&& answer) {
                         answered(b, answer);
                       },
                       [this, &b](kj::Exception&& e) { callFailed(b, kj::mv(e)); })
                   .attach(kj::mv(batch)));
  }

  void answered(Batch& b, capnp::Response<proto::Limiter::CheckBatchResults>& answer) {
    Peer& peer = *b.peer;
    const bool current = b.generation == peer.generation;
    recordLatency(impl_.service.clock().monotonic() - b.sent);
    // The peer answered: it is healthy. Said before the checks are delivered, so whoever sees an
    // answer sees the breaker closed.
    if (current) {
      peer.last_answer = timer_.now();
      if (peer.breaker != BreakerState::kClosed) {
        peer.cooldown = toKj(opt_.cooldown_min);
        setBreaker(peer, BreakerState::kClosed, "");
      }
    }
    std::string trouble;
    // Reading a malformed answer throws (Cap'n Proto's own checks).
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                   if (answer.hasError() &&
                       answer.getError().getCode() == proto::ErrorCode::NOT_DECIDED) {
                     for (Item& item : b.items) notDecided(std::move(item));
                     return;
                   }
                   if (answer.hasError() && answer.getError().getCode() != proto::ErrorCode::NONE) {
                     trouble =
                         "refused the batch: " + std::string(view(answer.getError().getMessage()));
                     return;
                   }
                   const auto results = answer.getResults();
                   if (results.size() != b.items.size()) {
                     trouble = "answered " + std::to_string(results.size()) + " results to " +
                               std::to_string(b.items.size()) + " checks";
                     return;
                   }
                   for (std::size_t i = 0; i < b.items.size(); ++i) {
                     Result<CheckOutcome> r = decode(results[static_cast<unsigned>(i)]);
                     if (!r && r.error().code == ErrorCode::kNotDecided) {
                       notDecided(std::move(b.items[i]));
                       continue;
                     }
                     if (r && b.items[i].standin) r->route = RouteKind::kDegraded;
                     deliver(b.items[i], std::move(r));
                   }
                 })) {
      trouble = "unreadable answer: " + describe(*e);
    }
    if (!trouble.empty()) {
      // The peer is up but cannot serve these checks (another protocol version, a bug): decide
      // them here rather than fail them. Not a breaker matter: the next call may well work.
      logWarn("forwarding to " + peer.id + ": " + trouble + "; deciding in degraded mode");
      for (Item& item : b.items) degrade(item);
    }
    if (!current) return;
    --peer.in_flight;
    flush(peer);
  }

  void callFailed(Batch& b, kj::Exception&& e) {
    Peer& peer = *b.peer;
    if (b.generation == peer.generation) failed(peer, describe(e));
    for (Item& item : b.items) reroute(std::move(item));
  }

  void recordBatchSize(std::size_t n) {
    std::size_t i = 0;
    while (i < kBatchSizeBounds.size() && n > kBatchSizeBounds[i]) ++i;
    bump(impl_.batch_sizes[i]);
    bump(impl_.batch_size_sum, n);
  }

  void recordLatency(Duration d) {
    const double s = std::chrono::duration<double>(d).count();
    std::size_t i = 0;
    while (i < kForwardLatencyBounds.size() && s > kForwardLatencyBounds[i]) ++i;
    bump(impl_.latency[i]);
    bump(impl_.latency_ns_sum,
         static_cast<std::uint64_t>(
             std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
  }

  Forwarder::Impl& impl_;
  const ForwarderOptions& opt_;
  kj::TimePoint last_tick_ = kj::origin<kj::TimePoint>();
  PeerConnector connect_;
  kj::Timer& timer_;
  capnp::ReaderOptions reader_options_;
  std::mt19937_64 rng_;
  // Null without TLS; made again after a certificate reload, and outlives the peers' connections.
  proto::TlsContextCache tls_;
  std::map<std::string, std::unique_ptr<Peer>> peers_;
  bool closing_ = false;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"  // KJ's interface; never deleted through it
  struct LogErrors final : kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override {
      logError("forwarder: unexpected task failure: " + std::string(e.getDescription().cStr()));
    }
  } log_errors_;
#pragma GCC diagnostic pop
  kj::TaskSet tasks_;  // last: destroyed first, while the peers it refers to still exist
};

}  // namespace

namespace {
// The loops attached on this thread (attachThread()), by the forwarder they belong to.
thread_local std::vector<std::pair<const Forwarder::Impl*, Loop*>> t_loops;
}  // namespace

struct ForwarderThread::Impl {
  Impl(Forwarder::Impl& f, kj::Timer& timer, PeerConnector connect)
      : owner(&f), loop(f, timer, std::move(connect)) {
    t_loops.emplace_back(owner, &loop);
  }
  ~Impl() {
    std::erase_if(t_loops, [this](const auto& entry) { return entry.second == &loop; });
  }
  const Forwarder::Impl* owner;
  Loop loop;
};

ForwarderThread::ForwarderThread(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ForwarderThread::~ForwarderThread() = default;
void ForwarderThread::shutdown() {
  impl_->loop.shutdown();
}

std::unique_ptr<ForwarderThread> Forwarder::attachThread(kj::Timer& timer, PeerConnector connect) {
  return std::make_unique<ForwarderThread>(
      std::make_unique<ForwarderThread::Impl>(*impl_, timer, std::move(connect)));
}

PeerConnector connectorOf(kj::Network& network) {
  return [&network](const std::string& address) {
    return network.parseAddress(address).then(
        [](kj::Own<kj::NetworkAddress> a) { return a->connect().attach(kj::mv(a)); });
  };
}

void Forwarder::Impl::decideHere(const ForwardedCheck& c, std::size_t index, ForwardSink& sink) {
  const auto& view = ring.current();
  if (!view || view->peerFor(c.slot) == RingView::kNoPeer) {
    sink.deliver(index, service.check(c.args()));
    return;
  }
  bump(degraded);
  sink.deliver(index, service.checkDegraded(c.args(), view->alive()));
}

void Forwarder::Impl::run(std::promise<void> ready) {
  auto io = kj::setupAsyncIo();
  Loop loop(*this, io.provider->getTimer(), connectorOf(io.provider->getNetwork()));
  kj::UnixEventPort::FdObserver observer(io.unixEventPort, event_fd,
                                         kj::UnixEventPort::FdObserver::OBSERVE_READ);
  ready.set_value();
  loop.serve(observer).wait(io.waitScope);
  // Closed: complete what is queued, then let canceled calls come back and degrade their checks.
  loop.shutdown();
  io.waitScope.poll();
}

Forwarder::Forwarder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Forwarder>> Forwarder::start(const ForwarderOptions& options,
                                                    LimiterService& service, const RingHolder& ring,
                                                    SlotGate* keeper) {
  if (options.max_batch == 0 || options.max_batch > kMaxBatchChecks) {
    return invalidArgument("forward batch size must be 1 to 1000");
  }
  auto impl = std::make_unique<Impl>(options, service, ring, keeper);
  if (impl->event_fd < 0) return Error{ErrorCode::kInternal, "eventfd failed"};
  std::promise<void> ready;
  auto started = ready.get_future();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw, ready = std::move(ready)]() mutable {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { raw->run(std::move(ready)); })) {
      logError("forwarder thread failed: " + std::string(e->getDescription().cStr()));
    }
  });
  started.wait();
  return std::unique_ptr<Forwarder>(new Forwarder(std::move(impl)));
}

Forwarder::~Forwarder() {
  stop();
}

void Forwarder::submit(std::vector<ForwardedCheck> checks, std::vector<std::size_t> indices,
                       std::shared_ptr<ForwardSink> sink, std::uint8_t hops,
                       std::int64_t decide_by_ms) {
  impl_->submit({std::move(checks), std::move(indices), std::move(sink), hops, decide_by_ms});
}

void Forwarder::Impl::submit(Submission s) {
  for (const auto& [owner, loop] : t_loops) {
    if (owner == this) {  // this thread forwards its own checks
      loop->submit(std::move(s));
      return;
    }
  }
  bump(handoffs, s.checks.size());
  MutexLock lock(mu);
  if (closed) {  // stopped: decided at once on this thread
    lock.unlock();
    for (std::size_t i = 0; i < s.checks.size(); ++i)
      decideHere(s.checks[i], s.indices[i], *s.sink);
    return;
  }
  // Only the first submission after a drain writes the eventfd: a burst costs one syscall.
  const bool wake_now = !std::exchange(wake_pending, true);
  inbox.push_back(std::move(s));
  lock.unlock();
  if (wake_now) wake();
}

void Forwarder::stop() {
  {
    MutexLock guard(impl_->mu);
    if (impl_->closed) return;
    impl_->closed = true;
  }
  impl_->wake();
  if (impl_->thread.joinable()) impl_->thread.join();
}

ForwarderStats Forwarder::stats() const {
  ForwarderStats s;
  {
    MutexLock guard(impl_->stats_mu);
    for (const auto& [id, c] : impl_->counters) {
      PeerStats p;
      p.node_id = id;
      p.address = c->address;
      p.breaker = static_cast<BreakerState>(c->breaker.load(std::memory_order_relaxed));
      p.calls = c->calls.load(std::memory_order_relaxed);
      p.checks = c->checks.load(std::memory_order_relaxed);
      p.failures = c->failures.load(std::memory_order_relaxed);
      p.breaker_opens = c->opens.load(std::memory_order_relaxed);
      s.peers.push_back(std::move(p));
    }
  }
  s.degraded = impl_->degraded.load(std::memory_order_relaxed);
  s.standin = impl_->standin.load(std::memory_order_relaxed);
  s.rerouted = impl_->rerouted.load(std::memory_order_relaxed);
  s.not_decided = impl_->not_decided.load(std::memory_order_relaxed);
  s.silences = impl_->silences.load(std::memory_order_relaxed);
  s.handoffs = impl_->handoffs.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < s.batch_sizes.size(); ++i) {
    s.batch_sizes[i] = impl_->batch_sizes[i].load(std::memory_order_relaxed);
  }
  s.batch_size_sum = impl_->batch_size_sum.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < s.latency.size(); ++i) {
    s.latency[i] = impl_->latency[i].load(std::memory_order_relaxed);
  }
  s.latency_sum_seconds =
      static_cast<double>(impl_->latency_ns_sum.load(std::memory_order_relaxed)) / 1e9;
  return s;
}

}  // namespace throttlex
