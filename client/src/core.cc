#include "client/src/core.h"

#include <kj/debug.h>

#include <algorithm>
#include <array>

#include "client/src/convert.h"
#include "client/src/throttle.h"
#include "proto/node_connection.h"

namespace throttlex::client::detail {
namespace {

// When an attempt started at `now` gives up on a check due at `deadline`: with another node to
// fail over to, half the time left, so that the other node still gets the rest; otherwise all.
kj::TimePoint attemptEnd(kj::TimePoint now, kj::TimePoint deadline, bool failover) {
  if (deadline <= now || !failover) return deadline;
  return now + (deadline - now) / 2;
}

// A budget in whole milliseconds for the wire: rounded up, at least 1 (0 means none there).
std::uint32_t budgetMs(kj::Duration budget) {
  const std::int64_t ms = (budget + kj::MILLISECONDS - 1 * kj::NANOSECONDS) / kj::MILLISECONDS;
  return static_cast<std::uint32_t>(std::clamp<std::int64_t>(ms, 1, UINT32_MAX));
}

kj::Duration toKj(std::chrono::milliseconds ms) {
  return ms.count() * kj::MILLISECONDS;
}

// A member list longer than this turns routing off rather than make the client thread hash
// kSlotCount * members times (~30 ms at 512); a node's answer is not trusted to be sane.
constexpr std::size_t kMaxRingMembers = 512;

std::uint64_t bit(std::size_t index) {
  return std::uint64_t{1} << index;
}

std::int64_t nanos(kj::TimePoint t) {
  return (t - kj::origin<kj::TimePoint>()) / kj::NANOSECONDS;
}

// Which of a node's throttles counts a check (0: normal, 1: sheddable); none: it is always sent,
// as the node never sheds it for load (critical) or answers it alike for all keys (the rest).
std::optional<std::size_t> throttleOf(const CheckSpec& s) {
  if (s.rule.empty() || s.release != 0 || s.renew != 0 || s.refund) return std::nullopt;
  if (s.priority == CheckSpec::Priority::kNormal) return 0;
  if (s.priority == CheckSpec::Priority::kSheddable) return 1;
  return std::nullopt;
}

// Rules whose shed answer is kept at most (a bound against a caller inventing rule names).
constexpr std::size_t kMaxShedAnswers = 4096;

std::string describe(const kj::Exception& e) {
  return std::string(e.getDescription().cStr());
}

// Failures that say "this node cannot answer now": the connection broke or was closed, a connect
// failed, or a call or connect ran past its attempt deadline (kj::Timer reports OVERLOADED). Other
// exceptions (FAILED, UNIMPLEMENTED) mean the node answered with an error: trying another node
// would not help.
bool nodeUnavailable(const kj::Exception& e) {
  return e.getType() == kj::Exception::Type::DISCONNECTED ||
         e.getType() == kj::Exception::Type::OVERLOADED;
}

}  // namespace

void Pending::arm(kj::Timer& timer, kj::TimePoint deadline) {
  deadline_ = deadline;
  timer_ = timer.atTime(deadline).then([this] { expire(); }).eagerlyEvaluate(nullptr);
}

CheckGroup::CheckGroup(std::vector<CheckSpec> specs, std::shared_ptr<CheckSink> sink,
                       OnUnavailable policy, AtomicStats& stats, kj::Timer& timer,
                       kj::TimePoint deadline)
    : specs_(std::move(specs)),
      sink_(std::move(sink)),
      policy_(policy),
      deadline_(deadline),
      stats_(stats),
      state_(specs_.size()) {
  timer_ = timer.atTime(deadline).then([this] { expire(); }).eagerlyEvaluate(nullptr);
}

void CheckGroup::complete(std::size_t i, CheckResult result) {
  if (state_[i].done) return;
  state_[i].done = true;
  if (result.fallback) AtomicStats::bump(stats_.fallbacks);
  sink_->deliver(i, std::move(result));
}

void CheckGroup::unavailable(std::size_t i, ErrorCode code, std::string why) {
  if (state_[i].done) return;
  complete(i, unavailableResult(policy_, code, std::move(why)));
}

void CheckGroup::expire() {
  for (std::size_t i = 0; i < state_.size(); ++i) {
    if (!state_[i].done) {
      unavailable(i, ErrorCode::kDeadlineExceeded, "no node answered within the deadline");
    }
  }
}

// Nearly every ref dies done (skipped, or with its answered batch): test before building a reason.
CheckRef::~CheckRef() {
  if (group_ && !done()) unavailable(ErrorCode::kUnavailable, "the client is shutting down");
}

struct Core::Connection : proto::NodeConnection {
  using NodeConnection::NodeConnection;
};

struct Core::Node {
  std::string address;       // as configured, or a member's rpc address: "host:port"
  std::string node_id;       // as the node itself or a member list said; empty: not known yet
  bool discovered = false;   // learned from a member list, not configured
  bool in_ring = false;      // discovered nodes: a ring member now (else no request goes there)
  kj::Own<Connection> conn;  // null while not connected
  bool connecting = false;
  bool flush_scheduled = false;
  std::uint64_t generation = 0;  // see invariant 2
  std::size_t in_flight = 0;     // check batches in flight on `conn`
  std::size_t admin_in_flight = 0;
  kj::TimePoint retry_at = kj::origin<kj::TimePoint>();  // down until then
  kj::Duration backoff;
  std::string last_error;
  std::deque<CheckRef> checks;                       // waiting to leave in a batch
  std::vector<std::unique_ptr<AdminPending>> admin;  // waiting for the connection
  kj::Canceler canceler;                             // see invariant 3
  std::array<AdaptiveThrottle, 2> throttles;         // normal and sheddable checks (throttleOf)
};

struct Core::Batch {
  std::size_t node;
  std::uint64_t generation;
  Checks checks;
};

struct Core::AdminInFlight {
  std::size_t node;
  std::uint64_t generation;
  std::unique_ptr<AdminPending> call;
};

kj::Promise<void> NodeInfoCall::send(proto::Node::Client& node, std::size_t index, Core& core) {
  auto request = node.nodeInfoRequest();
  request.setVersion(proto::PROTOCOL_VERSION);
  return request.send().then(
      [this, index, &core](capnp::Response<proto::Admin::NodeInfoResults>&& r) {
        NodeInfo info = fromProto(r.getInfo());  // throws on a malformed answer: the call fails
        core.learn(index, info);
        complete(std::move(info));
      });
}

void NodeInfoCall::complete(Result<NodeInfo> r) {
  if (done_) return;
  done_ = true;
  on_done_(std::move(r));
}

void Core::LogErrors::taskFailed(kj::Exception&& e) {
  // Every task handles its own failures; reaching this is a bug, but not one worth a crash.
  KJ_LOG(ERROR, "throttlex client: unexpected task failure", e);
}

Core::Core(const ClientOptions& options, kj::AsyncIoContext& io, AtomicStats& stats,
           const proto::TlsConfig* tls)
    : policy_(options.on_unavailable),
      max_batch_(options.max_batch),
      connect_timeout_(toKj(options.connect_timeout)),
      backoff_min_(toKj(options.retry_backoff_min)),
      backoff_max_(toKj(options.retry_backoff_max)),
      admin_deadline_(toKj(options.admin_deadline)),
      route_to_owner_(options.route_to_owner),
      ring_refresh_(toKj(options.ring_refresh)),
      learn_on_connect_(options.lazy_connect),
      overload_throttle_(options.overload_throttle),
      network_(io.provider->getNetwork()),
      timer_(io.provider->getTimer()),
      stats_(stats),
      tls_(tls != nullptr ? tls->clientContext() : kj::Own<kj::TlsContext>()),
      tasks_(log_errors_) {
  // Answers are small (a full batch of results is ~20 Ki words); 1 Mi words bounds a bad node.
  reader_options_.traversalLimitInWords = 1024 * 1024;
  reader_options_.nestingLimit = 16;
  for (const std::string& address : options.nodes) {
    auto node = std::make_unique<Node>();
    node->address = address;
    node->backoff = backoff_min_;
    nodes_.push_back(std::move(node));
  }
  if (route_to_owner_) scheduleRefresh();
}

Core::~Core() {
  shutdown();
}

void Core::shutdown() {
  closing_ = true;
  for (auto& node : nodes_) {
    // Destroying the requests completes them (CheckRef / AdminCall destructors).
    node->checks.clear();
    node->admin.clear();
  }
  // In-flight batches and admin calls are owned by tasks_, whose destruction completes them.
}

void Core::submitChecks(std::vector<CheckSpec> specs, std::shared_ptr<CheckSink> sink,
                        std::chrono::milliseconds deadline) {
  auto group = kj::refcounted<CheckGroup>(std::move(specs), std::move(sink), policy_, stats_,
                                          timer_, timer_.now() + toKj(deadline));
  for (std::size_t i = 0; i < group->size(); ++i) {
    // A key the node would refuse anyway is refused here: a huge one could make the node drop
    // the whole batch it travels in (its message traversal limit).
    const CheckSpec& spec = group->spec(i);
    if (spec.key.size() > kMaxKeyBytes) {
      group->complete(i, errorResult(ErrorCode::kInvalidArgument,
                                     "key is " + std::to_string(spec.key.size()) +
                                         " bytes; the maximum is " + std::to_string(kMaxKeyBytes)));
      continue;
    }
    if (spec.rule.size() > kMaxRuleNameBytes) {  // likewise
      group->complete(
          i, errorResult(ErrorCode::kInvalidArgument,
                         "rule name is " + std::to_string(spec.rule.size()) +
                             " bytes; the maximum is " + std::to_string(kMaxRuleNameBytes)));
      continue;
    }
    route(CheckRef(kj::addRef(*group), i));
  }
}

void Core::submitAdmin(std::unique_ptr<AdminPending> call, std::chrono::milliseconds deadline) {
  call->arm(timer_, timer_.now() + toKj(deadline));
  route(std::move(call));
}

// Connected, connecting or past its backoff; a discovered node only while it is in the ring.
bool Core::usable(const Node& node) const {
  if (node.discovered && !node.in_ring) return false;
  return node.conn || node.connecting || timer_.now() >= node.retry_at;
}

// The first usable node, from preferred_ on, that this request has not tried.
std::optional<std::size_t> Core::pickNode(std::uint64_t tried) const {
  for (std::size_t k = 0; k < nodes_.size(); ++k) {
    const std::size_t i = (preferred_ + k) % nodes_.size();
    if ((tried & bit(i)) == 0 && usable(*nodes_[i])) return i;
  }
  return std::nullopt;
}

// The owner of `slot` when a ring is known and the owner is usable and not tried yet.
std::optional<std::size_t> Core::usableOwner(std::uint32_t slot, std::uint64_t tried) const {
  const std::optional<std::size_t> owner = owners_.owner(slot);
  if (!owner || (tried & bit(*owner)) != 0 || !usable(*nodes_[*owner])) return std::nullopt;
  return owner;
}

std::string Core::unavailableReason() const {
  if (closing_) return "the client is shutting down";
  std::string why = "no ThrottleX node reachable (";
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (i > 0) why += "; ";
    why += nodes_[i]->address + ": " +
           (nodes_[i]->last_error.empty() ? "not tried" : nodes_[i]->last_error);
  }
  return why + ")";
}

void Core::route(CheckRef check) {
  if (check.done()) return;
  std::optional<std::size_t> index;
  std::optional<std::size_t> owner;
  if (!closing_) {
    if (owners_.active()) owner = usableOwner(slotOf(check.spec()), check.tried());
    index = owner ? owner : pickNode(check.tried());
  }
  if (!index) {
    // The reason is only shown with kReturnError; skip building it for every check of an outage.
    check.unavailable(ErrorCode::kUnavailable,
                      policy_ == OnUnavailable::kReturnError ? unavailableReason() : "");
    return;
  }
  if (overload_throttle_ > 0 && shedLocally(*nodes_[*index], check)) return;
  if (check.tried() != 0) AtomicStats::bump(stats_.failovers);
  if (owners_.active()) {
    AtomicStats::bump(owner ? stats_.checks_to_owner : stats_.checks_not_to_owner);
  }
  nodes_[*index]->checks.push_back(std::move(check));
  connect(*index);
  scheduleFlush(*index);
}

bool Core::shedLocally(Node& node, CheckRef& check) {
  const auto which = throttleOf(check.spec());
  if (!which) return false;
  const kj::TimePoint now = timer_.now();
  AdaptiveThrottle& throttle = node.throttles[*which];
  throttle.request(nanos(now));
  const double share = throttle.rejectShare(nanos(now), overload_throttle_);
  if (share <= 0) return false;
  random_ ^= random_ << 13;  // xorshift64
  random_ ^= random_ >> 7;
  random_ ^= random_ << 17;
  if (static_cast<double>(random_ >> 11) * 0x1.0p-53 >= share) return false;
  const auto cached = shed_answers_.find(check.spec().rule);
  if (cached == shed_answers_.end() || now - cached->second.at > kj::SECONDS) return false;
  CheckResult r = cached->second.result;
  r.shed_locally = true;
  AtomicStats::bump(stats_.checks_shed_locally);  // before the caller can see the answer
  check.complete(std::move(r));
  return true;
}

void Core::countAnswer(Node& node, const CheckSpec& spec, const CheckResult& r, kj::TimePoint now) {
  const auto which = throttleOf(spec);
  if (!which) return;
  if (r.shed == ShedReason::kNone) {
    node.throttles[*which].accept(nanos(now), 1);
    return;
  }
  // Kept fresh, but not copied for every shed answer of a batch: at most every 100 ms per rule.
  if (r.shed != ShedReason::kOverload || !r.ok() || r.lease_id != 0) return;
  auto it = shed_answers_.find(spec.rule);
  if (it != shed_answers_.end()) {
    if (now - it->second.at >= 100 * kj::MILLISECONDS) it->second = ShedAnswer{r, now};
    return;
  }
  if (shed_answers_.size() >= kMaxShedAnswers) shed_answers_.clear();
  shed_answers_.emplace(spec.rule, ShedAnswer{r, now});
}

void Core::route(std::unique_ptr<AdminPending> call) {
  if (call->done()) return;
  std::optional<std::size_t> index;
  if (!closing_) {
    if (call->slot && owners_.active()) index = usableOwner(*call->slot, call->tried);
    if (!index) index = pickNode(call->tried);
  }
  if (!index) {
    call->fail({ErrorCode::kUnavailable, unavailableReason()});
    return;
  }
  nodes_[*index]->admin.push_back(std::move(call));
  connect(*index);
  scheduleFlush(*index);
}

void Core::connect(std::size_t index) {
  Node& node = *nodes_[index];
  if (node.conn || node.connecting || closing_) return;
  node.connecting = true;
  const std::uint64_t generation = node.generation;
  // parseAddress may resolve a name (KJ does that on a helper thread); both steps count against
  // connect_timeout. Cap'n Proto has no connect timeout of its own.
  auto stream = proto::connectNode(network_, node.address, tls_.get());
  tasks_.add(node.canceler.wrap(timer_.timeoutAfter(connect_timeout_, kj::mv(stream)))
                 .then(
                     [this, index, generation](kj::Own<kj::AsyncIoStream> s) {
                       onConnected(index, generation, kj::mv(s));
                     },
                     [this, index, generation](kj::Exception&& e) {
                       if (generation != nodes_[index]->generation) return;
                       markDown(index, e.getType() == kj::Exception::Type::OVERLOADED
                                           ? "connect timed out"
                                           : "connect failed: " + describe(e));
                     }));
}

void Core::onConnected(std::size_t index, std::uint64_t generation,
                       kj::Own<kj::AsyncIoStream> stream) {
  Node& node = *nodes_[index];
  if (generation != node.generation) return;  // marked down meanwhile: drop the stream
  node.connecting = false;
  node.conn = kj::heap<Connection>(kj::mv(stream), reader_options_);
  tasks_.add(node.canceler.wrap(node.conn->network.onDisconnect())
                 .then([this, index, generation] { onDisconnected(index, generation); },
                       [](kj::Exception&&) {}));  // canceled: the node was marked down already
  if (route_to_owner_ && learn_on_connect_ && !learned_) refreshRing();
  flush(index);
}

void Core::onDisconnected(std::size_t index, std::uint64_t generation) {
  Node& node = *nodes_[index];
  if (generation != node.generation) return;
  if (node.in_flight == 0 && node.admin_in_flight == 0) {
    // Closed while idle (the node restarted, an idle timeout): nothing was lost and the node may
    // be back already, so no backoff: the next request reconnects.
    closeConnection(index, "connection closed");
    if (!node.checks.empty() || !node.admin.empty()) connect(index);
    return;
  }
  markDown(index, "connection closed");
}

void Core::closeConnection(std::size_t index, const std::string& reason) {
  Node& node = *nodes_[index];
  ++node.generation;
  node.connecting = false;
  node.in_flight = 0;
  node.admin_in_flight = 0;
  // Cancels the connect or the calls in flight; their handlers see a stale generation and only
  // re-route their own requests.
  node.canceler.cancel(kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                                     kj::str("node ", node.address.c_str(), ": ", reason.c_str())));
  // We may be inside a callback of this connection: destroy it from a later turn of the loop.
  if (node.conn) tasks_.add(kj::evalLater([] {}).attach(kj::mv(node.conn)));
}

void Core::markDown(std::size_t index, const std::string& reason) {
  Node& node = *nodes_[index];
  closeConnection(index, reason);
  node.last_error = reason;
  node.retry_at = timer_.now() + node.backoff;
  node.backoff = std::min(node.backoff * 2, backoff_max_);
  AtomicStats::bump(stats_.nodes_marked_down);
  if (preferred_ == index) preferred_ = (index + 1) % nodes_.size();
  // Gossip may have declared the node dead already; if so, its slots have new owners now.
  if (owners_.active()) refreshSoon();

  auto checks = std::move(node.checks);
  node.checks.clear();
  auto admin = std::move(node.admin);
  node.admin.clear();
  for (auto& check : checks) {
    check.tried() |= bit(index);
    route(std::move(check));
  }
  for (auto& call : admin) {
    call->tried |= bit(index);
    route(std::move(call));
  }
}

void Core::scheduleFlush(std::size_t index) {
  Node& node = *nodes_[index];
  if (!node.conn || node.flush_scheduled) return;
  // Later in this turn of the loop, so that everything routed now (a whole inbox drain) can leave
  // together.
  node.flush_scheduled = true;
  tasks_.add(kj::evalLater([this, index] {
    nodes_[index]->flush_scheduled = false;
    flush(index);
  }));
}

// Adaptive batching: with nothing in flight, everything waiting leaves at once; while a batch is
// in flight, checks wait for it to return, unless a full batch has gathered.
void Core::flush(std::size_t index) {
  Node& node = *nodes_[index];
  if (!node.conn) return;
  auto admin = std::move(node.admin);
  node.admin.clear();
  for (auto& call : admin) {
    if (!call->done()) sendAdmin(index, std::move(call));
  }
  while (!node.checks.empty() && (node.in_flight == 0 || node.checks.size() >= max_batch_)) {
    Checks batch;
    batch.reserve(std::min(node.checks.size(), max_batch_));
    while (!node.checks.empty() && batch.size() < max_batch_) {
      if (!node.checks.front().done()) batch.push_back(std::move(node.checks.front()));
      node.checks.pop_front();
    }
    if (batch.empty()) break;
    sendChecks(index, std::move(batch));
  }
}

// When an attempt on `index` gives up (attemptEnd, failing over to any other node not tried).
kj::TimePoint Core::attemptDeadline(std::size_t index, kj::TimePoint deadline) const {
  return attemptEnd(timer_.now(), deadline, pickNode(bit(index)).has_value());
}

void Core::sendChecks(std::size_t index, Checks checks) {
  Node& node = *nodes_[index];
  // The exact size: one message segment, instead of a series of growing ones (a full batch is
  // ~100 KiB; each segment is a calloc the allocator may hand back to the kernel when freed).
  // Only a hint: a wrong one costs a second segment or some unused words, nothing else.
  capnp::MessageSize size{3, 0};  // the params struct (2 words) and the list's tag word
  for (const CheckRef& check : checks) size.wordCount += wireWords(check.spec());
  auto request = node.conn->node.checkBatchRequest(size);
  request.setVersion(proto::PROTOCOL_VERSION);
  request.setCompactShed(true);
  auto list = request.initChecks(static_cast<unsigned>(checks.size()));
  // The attempt gives up at the LATEST deadline in the batch: each submission has its own timer
  // for its own deadline, and one short deadline must not mark a healthy node down for everyone.
  // Each check carries what this attempt waits for it (deadlineMs): a node that holds it longer
  // neither forwards nor decides it, since nobody waits for that answer (docs/overload.md).
  const kj::TimePoint now = timer_.now();
  const bool failover = pickNode(bit(index)).has_value();
  kj::TimePoint latest = checks.front().deadline();
  for (std::size_t i = 0; i < checks.size(); ++i) {
    auto wire = list[static_cast<unsigned>(i)];
    toProto(checks[i].spec(), wire);
    wire.setDeadlineMs(budgetMs(attemptEnd(now, checks[i].deadline(), failover) - now));
    latest = std::max(latest, checks[i].deadline());
  }
  ++node.in_flight;
  AtomicStats::bump(stats_.calls);
  AtomicStats::bump(stats_.checks, checks.size());

  auto batch = kj::heap<Batch>(Batch{index, node.generation, std::move(checks)});
  Batch& b = *batch;
  kj::Promise<capnp::Response<proto::Limiter::CheckBatchResults>> call = request.send();
  tasks_.add(node.canceler.wrap(timer_.timeoutAt(attemptDeadline(index, latest), kj::mv(call)))
                 .then(
                     [this, &b](capnp::Response<proto::Limiter::CheckBatchResults>&& answer) {
                       onBatchAnswered(b, answer);
                     },
                     [this, &b](kj::Exception&& e) { onBatchFailed(b, kj::mv(e)); })
                 .attach(kj::mv(batch)));
}

void Core::onBatchAnswered(Batch& batch,
                           capnp::Response<proto::Limiter::CheckBatchResults>& answer) {
  Node& node = *nodes_[batch.node];
  const bool current = batch.generation == node.generation;
  if (current) {
    --node.in_flight;
    node.backoff = backoff_min_;
  }
  auto deliver = [&] { deliverBatch(batch, answer); };
  // Reading a malformed answer throws (Cap'n Proto's own checks); it fails these checks only.
  KJ_IF_MAYBE (e, kj::runCatchingExceptions(deliver)) {
    for (auto& check : batch.checks) {
      check.complete(errorResult(ErrorCode::kInternal, "unreadable answer: " + describe(*e)));
    }
  }
  if (current) flush(batch.node);
}

void Core::deliverBatch(Batch& batch, capnp::Response<proto::Limiter::CheckBatchResults>& answer) {
  const Error error = fromProto(answer.getError());
  if (error.code != ErrorCode::kNone) {
    for (auto& check : batch.checks) check.complete(errorResult(error.code, error.message));
    return;
  }
  Node& node = *nodes_[batch.node];
  const kj::TimePoint now = timer_.now();
  const auto finish = [&](std::size_t i, CheckResult r) {
    if (overload_throttle_ > 0) countAnswer(node, batch.checks[i].spec(), r, now);
    batch.checks[i].complete(std::move(r));
  };
  const auto results = answer.getResults();
  if (results.size() == 0 && answer.hasShedIndex()) {
    // Shed whole and answered compactly (compactShed): each answer once, an index per check.
    const auto index = answer.getShedIndex();
    std::vector<CheckResult> answers;
    for (const auto a : answer.getShedAnswers()) answers.push_back(fromProto(a));
    const bool fits =
        index.size() == batch.checks.size() &&
        std::all_of(index.begin(), index.end(), [&](kj::byte k) { return k < answers.size(); });
    if (!fits) {
      for (auto& check : batch.checks) {
        check.complete(errorResult(ErrorCode::kInternal,
                                   "the node's shed answer does not match the batch's checks"));
      }
      return;
    }
    for (std::size_t i = 0; i < batch.checks.size(); ++i) finish(i, answers[index[i]]);
    return;
  }
  if (results.size() != batch.checks.size()) {
    for (auto& check : batch.checks) {
      check.complete(
          errorResult(ErrorCode::kInternal, "the node answered " + std::to_string(results.size()) +
                                                " results to " +
                                                std::to_string(batch.checks.size()) + " checks"));
    }
    return;
  }
  for (std::size_t i = 0; i < batch.checks.size(); ++i) {
    finish(i, fromProto(results[static_cast<unsigned>(i)]));
  }
}

void Core::onBatchFailed(Batch& batch, kj::Exception&& e) {
  Node& node = *nodes_[batch.node];
  const bool current = batch.generation == node.generation;
  if (current) --node.in_flight;
  if (!nodeUnavailable(e)) {
    for (auto& check : batch.checks) {
      check.complete(errorResult(ErrorCode::kInternal, "the call failed: " + describe(e)));
    }
    if (current) flush(batch.node);
    return;
  }
  if (current) {
    markDown(batch.node,
             e.getType() == kj::Exception::Type::OVERLOADED ? "no answer in time" : describe(e));
  }
  for (auto& check : batch.checks) {
    check.tried() |= bit(batch.node);
    route(std::move(check));
  }
}

void Core::sendAdmin(std::size_t index, std::unique_ptr<AdminPending> call) {
  Node& node = *nodes_[index];
  AtomicStats::bump(stats_.calls);
  ++node.admin_in_flight;
  const kj::TimePoint until = attemptDeadline(index, call->deadline());
  auto in_flight = kj::heap<AdminInFlight>(AdminInFlight{index, node.generation, std::move(call)});
  AdminInFlight& a = *in_flight;
  tasks_.add(
      node.canceler.wrap(timer_.timeoutAt(until, a.call->send(node.conn->node, index, *this)))
          .then(
              [this, &a] {
                Node& n = *nodes_[a.node];
                if (a.generation != n.generation) return;
                --n.admin_in_flight;
                n.backoff = backoff_min_;
              },
              [this, &a](kj::Exception&& e) { onAdminFailed(a, kj::mv(e)); })
          .attach(kj::mv(in_flight)));
}

void Core::onAdminFailed(AdminInFlight& call, kj::Exception&& e) {
  Node& node = *nodes_[call.node];
  const bool current = call.generation == node.generation;
  if (current) --node.admin_in_flight;
  if (!nodeUnavailable(e)) {
    call.call->fail({ErrorCode::kInternal, "the call failed: " + describe(e)});
    return;
  }
  if (current) {
    markDown(call.node,
             e.getType() == kj::Exception::Type::OVERLOADED ? "no answer in time" : describe(e));
  }
  call.call->tried |= bit(call.node);
  route(std::move(call.call));
}

void Core::learn(std::size_t index, const NodeInfo& info) {
  learned_ = true;
  if (!info.node_id.empty()) nodes_[index]->node_id = info.node_id;
  if (!route_to_owner_) return;
  std::vector<const Member*> live;  // the ring's members: alive or suspect (ownsSlots)
  for (const Member& m : info.members) {
    if (ownsSlots(m.state) && !m.node_id.empty()) live.push_back(&m);
  }
  if (live.size() > kMaxRingMembers) live.clear();
  // Discovered nodes take requests only while they are in the ring (configured ones always).
  for (auto& node : nodes_) {
    if (node->discovered) node->in_ring = false;
  }
  std::vector<std::string> ids;
  std::vector<std::pair<std::string, std::size_t>> node_of;
  for (const Member* m : live) {
    ids.push_back(m->node_id);
    if (const auto i = nodeOfMember(*m)) {
      nodes_[*i]->in_ring = true;
      node_of.emplace_back(m->node_id, *i);
    }
  }
  owners_.assign(std::move(ids), [&node_of](const std::string& id) -> std::optional<std::size_t> {
    for (const auto& [member, node] : node_of) {
      if (member == id) return node;
    }
    return std::nullopt;
  });
  stats_.ring_members.store(owners_.members(), std::memory_order_relaxed);
}

// The node of a ring member: the one with its id (a discovered one only at the member's current
// address), else the one at its rpc address (which then takes the member's id), else a new node
// there, while under kMaxNodes and if the address is usable. An address spelled differently from
// a configured one ("localhost" vs "127.0.0.1") adds a second node for the same member until that
// configured node itself answers nodeInfo; the duplicate then stops taking requests.
std::optional<std::size_t> Core::nodeOfMember(const Member& member) {
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    const Node& node = *nodes_[i];
    if (node.node_id == member.node_id &&
        (!node.discovered || node.address == member.rpc_address)) {
      return i;
    }
  }
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (nodes_[i]->address == member.rpc_address) {
      nodes_[i]->node_id = member.node_id;
      return i;
    }
  }
  if (nodes_.size() >= kMaxNodes || !validNodeAddress(member.rpc_address)) return std::nullopt;
  auto node = std::make_unique<Node>();
  node->address = member.rpc_address;
  node->node_id = member.node_id;
  node->discovered = true;
  node->backoff = backoff_min_;
  nodes_.push_back(std::move(node));
  return nodes_.size() - 1;
}

// Every ring_refresh once some node has answered nodeInfo, so that membership changes reach the
// client within about one period. Refreshes are ordinary admin calls: no check waits for one.
void Core::scheduleRefresh() {
  tasks_.add(timer_.afterDelay(ring_refresh_).then([this] {
    if (closing_) return;
    if (learned_) refreshRing();
    scheduleRefresh();
  }));
}

void Core::refreshRing() {
  if (closing_ || refreshing_) return;
  refreshing_ = true;
  last_refresh_ = timer_.now();
  // A refresh that fails changes nothing: the ring stays as the last answer described it.
  auto call = std::make_unique<NodeInfoCall>([this](Result<NodeInfo>) { refreshing_ = false; });
  call->arm(timer_, timer_.now() + admin_deadline_);
  route(std::unique_ptr<AdminPending>(std::move(call)));
}

// After a node was marked down: at once, but at most once per backoff_min, since an outage marks
// many nodes down, and each of them again at every retry.
void Core::refreshSoon() {
  if (timer_.now() - last_refresh_ >= backoff_min_) refreshRing();
}

}  // namespace throttlex::client::detail
