// The ThrottleX client library: asks ThrottleX nodes "may key K spend N units now?" over Cap'n
// Proto RPC, and drives the admin calls that throttlectl uses.
//
//   throttlex::client::ClientOptions options;
//   options.nodes = {"10.0.0.1:7400", "10.0.0.2:7400"};
//   auto client = throttlex::client::Client::connect(options);
//   if (!client) { /* client.error().message says why no node could be reached */ }
//   throttlex::client::CheckSpec spec;
//   spec.key = "user:42";
//   spec.limit = 100;
//   spec.period = std::chrono::seconds(60);
//   throttlex::client::CheckResult r = (*client)->check(spec);
//   if (r.ok() && !r.allowed) { /* reject, retry after r.retry_after */ }
//
// Promises:
//  - Thread-safe: every method may be called from any thread at once.
//  - A check never hangs: it completes within its deadline (plus scheduling noise) — with the
//    node's answer, or, when no node answered in time, as `on_unavailable` says (fallback = true).
//  - Routing: in a cluster, each check goes straight to the node that owns its key (the ring every
//    node derives from the live members), learned from the nodes themselves; see route_to_owner.
//  - Failover: a node that refuses or drops the connection or misses a deadline is marked down and
//    retried later with exponential backoff; its pending checks go to the next listed node within
//    the same deadline. A check retried on another node may have been counted by the first node
//    too: that over-counts (denies early), it never over-admits.
//  - Adaptive batching: per node, a check is sent at once when nothing is in flight; while a call
//    is in flight, further checks wait and leave together as one batch when it returns (at most
//    max_batch per batch). No timer adds latency.
//  - Callbacks (checkAsync) run on the client's own background thread: they must be quick, must
//    not throw and must not call the client's synchronous methods (those return an error instead
//    of deadlocking).
//
// The library is a shared library with only this header public; it needs C++17.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#define THROTTLEX_CLIENT_API __attribute__((visibility("default")))

namespace throttlex::client {

// Numeric values are those of the wire protocol's ErrorCode.
enum class ErrorCode : std::uint8_t {
  kNone = 0,
  kInvalidArgument = 1,   // the request is malformed or out of range
  kNotFound = 2,          // unknown rule (or no rules file, for reloadRules)
  kUnavailable = 3,       // no node could be reached
  kDeadlineExceeded = 4,  // no answer within the deadline
  kResourceExhausted = 5,
  kInternal = 6,
  kUnsupportedVersion = 7,  // the node does not speak this client's protocol version
  kPermissionDenied = 9,    // this client's certificate does not allow the call (TLS roles)
};
THROTTLEX_CLIENT_API std::string_view errorCodeName(ErrorCode code);  // "unavailable", ...

struct Error {
  ErrorCode code = ErrorCode::kNone;
  std::string message;
};

// A value or an Error (expected failures are values; the library throws nothing of its own).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  const T& value() const& { return std::get<0>(v_); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};
struct Ok {};
using Status = Result<Ok>;

// Numeric values are those of the wire protocol.
enum class Algorithm : std::uint8_t {
  kTokenBucket = 1,
  kLeakyBucket = 2,
  kFixedWindow = 3,
  kSlidingWindow = 4,
  kGcra = 5,
  kConcurrency = 6,  // leases held at once; `period` is a lease's time to live
};

inline constexpr std::size_t kMaxKeyBytes = 1024;      // longer keys are refused without a call
inline constexpr std::size_t kMaxRuleNameBytes = 128;  // longer rule names, likewise
inline constexpr std::size_t kMaxBatch = 1000;         // the protocol's most checks per call

// One check: a key and either a named rule configured on the node or an inline limit.
struct CheckSpec {
  std::string key;   // 1..kMaxKeyBytes bytes
  std::string rule;  // a named rule; empty: the inline limit below
  Algorithm algorithm = Algorithm::kTokenBucket;
  std::uint64_t limit = 0;              // units per period (at most 2^40; 0 denies everything)
  std::chrono::milliseconds period{0};  // 1ms .. 365d
  std::uint64_t burst = 0;              // bucket algorithms: capacity; 0 = limit
  std::uint64_t hits = 1;               // units to spend; 0 reads without consuming
  // Gives `hits` units back instead of spending them (a refund: reserve an estimate, settle the
  // real cost after). A bucket refills at most to full, a window's count drops at most to 0.
  bool refund = false;
  // Concurrency limits (docs/concurrency.md): a check acquires a lease of `hits` units; set
  // `release` to a lease's id to release it instead, or `renew` to extend it by a lease_ttl from
  // now (for work that outlasts it). 0: acquire. At most one of the two.
  std::uint64_t release = 0;
  std::uint64_t renew = 0;
  // What an overloaded node sheds first (docs/overload.md): kSheddable goes first, kCritical is
  // never shed for load.
  enum class Priority : std::uint8_t { kNormal = 0, kCritical = 1, kSheddable = 2 };
  Priority priority = Priority::kNormal;
};

// Why a node answered by the rule's overload policy instead of deciding (CheckResult::shed).
enum class ShedReason : std::uint8_t { kNone = 0, kOverload = 1, kDeadline = 2 };

// What a release found (CheckResult::released).
enum class LeaseRelease : std::uint8_t {
  kNone = 0,             // the check was no release
  kReleased = 1,         // it was held; its units are back
  kUnknown = 2,          // no such lease of this key
  kExpired = 3,          // it expired before the release (its units came back then)
  kAlreadyReleased = 4,  // released before; nothing changed
};

// What a renewal found (CheckResult::renewed).
enum class LeaseRenewal : std::uint8_t {
  kNone = 0,      // the check was no renewal (or the node predates renewals)
  kRenewed = 1,   // it was held; it now expires at lease_expiry_ms
  kUnknown = 2,   // no such lease of this key
  kExpired = 3,   // it expired before the renewal (its units came back then): acquire anew
  kReleased = 4,  // it was released; nothing changed
};

// Who decided a check (the node's answer says): the node the client sent it to, which owns the
// key; the key's owner, one hop further; or, the owner being unreachable, the node by the rule's
// degraded policy (docs/api.md).
enum class Route : std::uint8_t { kLocal, kForwarded, kDegraded };

struct CheckResult {
  Error error;                   // code kNone: the fields below are valid
  bool allowed = false;          // what the caller must do (true for shadow rules and FailOpen)
  bool decided_allowed = false;  // the limiter's own decision (equals allowed for a fallback)
  bool shadow = false;           // the rule is in shadow (dry-run) mode
  bool fallback = false;         // no node answered in time: on_unavailable decided `allowed`
  std::uint64_t limit = 0;
  std::uint64_t remaining = 0;
  std::chrono::nanoseconds reset_after{0};  // until the key is back to its neutral state
  std::chrono::nanoseconds retry_after{0};  // 0 when allowed; negative: never (hits > capacity)
  std::chrono::milliseconds period{0};
  std::string policy;           // the rule's name, or "default" for inline limits
  Route route = Route::kLocal;  // meaningful when ok() and not a fallback
  bool refunded = false;        // checkAtomic(): admitted, then given back (the batch was denied)
  // Concurrency limits: the lease an allowed acquire holds (0: none) and when it expires at the
  // latest (Unix ms); what a release or a renewal found (a renewed lease: its id and new expiry).
  std::uint64_t lease_id = 0;
  std::int64_t lease_expiry_ms = 0;
  LeaseRelease released = LeaseRelease::kNone;
  LeaseRenewal renewed = LeaseRenewal::kNone;
  // kNone: decided. Else the node was overloaded and answered `allowed` by the rule's overload
  // policy: not a decision about the key.
  ShedReason shed = ShedReason::kNone;
  // A shed answer given by this client without asking a node: the node was shedding the checks
  // it sent there (ClientOptions::overload_throttle). Its fields are the node's last shed answer
  // for the rule.
  bool shed_locally = false;

  bool ok() const { return error.code == ErrorCode::kNone; }
};

// checkAtomic()'s answer: one verdict for the whole batch.
struct AtomicResult {
  bool allowed = false;
  std::optional<std::size_t> denied_by;  // the first check not allowed (or failed)
  std::vector<CheckResult> results;      // in request order
};

// What a check returns when no node answered within its deadline.
enum class OnUnavailable : std::uint8_t {
  kFailOpen,     // allowed = true, fallback = true (the default: a limiter outage is no outage)
  kFailClosed,   // allowed = false, fallback = true
  kReturnError,  // error kUnavailable or kDeadlineExceeded
};

struct ClientOptions {
  std::vector<std::string> nodes;  // "host:port" or "[v6addr]:port"; preferred in this order; <= 64
  std::chrono::milliseconds deadline{200};         // per check / checkBatch, failover included
  std::chrono::milliseconds admin_deadline{2000};  // per admin call
  std::chrono::milliseconds connect_timeout{100};  // per TCP connect attempt
  OnUnavailable on_unavailable = OnUnavailable::kFailOpen;
  std::size_t max_batch = kMaxBatch;                  // most checks per call, 1..kMaxBatch
  std::chrono::milliseconds retry_backoff_min{100};   // a down node is retried after this, ...
  std::chrono::milliseconds retry_backoff_max{5000};  // ... doubling up to this
  // connect() normally waits until one node answers (nodeInfo), so that a wrong address shows up
  // at once. true: return at once and connect on the first call.
  bool lazy_connect = false;
  // true: once a node has described its cluster (any nodeInfo answer: connect()'s, the client's
  // own refresh, or the caller's), each check goes straight to the node owning its key, so the
  // node need not forward it; when the owner is down or already failed the check, the check goes
  // to another node as under failover (that node forwards it, or decides degraded). The client
  // adds the members' RPC addresses to `nodes` (64 nodes in all at most; configured ones are
  // kept). A node that is in no cluster, or in one of itself alone, is used as with false.
  bool route_to_owner = true;
  // How often the client asks a node for the members (> 0); also soon after a node is marked
  // down. Asking never delays a check; a failed ask keeps the ring it had.
  std::chrono::milliseconds ring_refresh{1000};
  // TLS (docs/security.md): PEM files of the cluster's CA and of this client's certificate and
  // key; all three or none. The certificate's common name is its role (client:NAME for checks,
  // admin:NAME for throttlectl's changes). The node's certificate is verified against the CA.
  std::string tls_ca, tls_cert, tls_key;
  // Adaptive throttling (docs/overload.md): while a node sheds the checks of a priority that the
  // client sends it, the client answers a share of the next ones of that priority itself, with
  // the node's last shed answer for their rule (shed_locally), so that an overloaded node spends
  // nothing on them. The node keeps getting about this many times what it decides (the Google
  // SRE book's K), so it still sheds the rest itself and the client sees it recover. At least 1;
  // 0: off. Critical checks, releases, renewals, refunds and inline limits are always sent.
  double overload_throttle = 2.0;
};

// How one admitted call of an adaptive rule went (docs/adaptive.md). Wire values equal the
// daemon's.
enum class ReportOutcome : std::uint8_t { kOk = 0, kError = 1, kTimeout = 2, kOverloaded = 3 };

struct Report {
  std::string rule;
  std::optional<std::chrono::nanoseconds> latency;  // 0 .. 1 hour; none: only the outcome counts
  ReportOutcome outcome = ReportOutcome::kOk;
};

// An adaptive rule's block and (from listRules) where its limit stands on the answering node.
struct AdaptiveInfo {
  std::uint64_t min = 0, max = 0;
  std::chrono::milliseconds latency_target{0};  // 0: no latency signal
  double percentile = 0.9;                      // a fraction
  double error_rate_max = 0;                    // a fraction; 0: no error signal
  std::string law;                              // "aimd" or "gradient"
  std::chrono::milliseconds interval{0};

  std::uint64_t limit = 0;                          // the effective limit
  std::string reason;                               // the signal that moved (or held) it last
  std::uint64_t reports = 0;                        // in the interval that step read
  std::optional<std::chrono::nanoseconds> latency;  // at the percentile, that interval
  double error_rate = 0;
  bool controlled_here = false;  // the answering node is the rule's controller
  struct Change {
    std::int64_t at_unix_ms = 0;
    std::uint64_t limit = 0;
    std::string reason;
  };
  std::vector<Change> history;  // the last changes, oldest first
};

// What a node decides for a rule's keys while their owner cannot be reached (docs/api.md).
enum class DegradedPolicy : std::uint8_t { kShare = 0, kAllow = 1, kDeny = 2 };
// What a check of the rule answers when the node sheds it (docs/overload.md).
enum class OverloadPolicy : std::uint8_t { kAllow = 0, kDeny = 1 };

struct Rule {
  std::string name;  // [A-Za-z0-9_.:-], at most 128 bytes
  Algorithm algorithm = Algorithm::kTokenBucket;
  std::uint64_t limit = 0;  // an adaptive rule's starting limit
  std::chrono::milliseconds period{0};
  std::uint64_t burst = 0;
  bool shadow = false;
  DegradedPolicy degraded = DegradedPolicy::kShare;
  OverloadPolicy overload = OverloadPolicy::kAllow;
  std::optional<AdaptiveInfo> adaptive;  // listRules only; setRule sets plain rules
};

struct Member {
  std::string node_id;
  std::string state;  // alive, suspect, dead, left
  std::string gossip_address;
  std::string rpc_address;
  std::string http_address;
  std::uint64_t incarnation = 0;
};

// Snapshots, recovery and handoffs of one node (docs/persistence.md).
struct PersistenceInfo {
  std::string redis;  // host:port of the snapshot store; empty: memory only
  bool connected = false;
  std::uint64_t pending = 0;         // changed entries not yet written
  std::chrono::milliseconds lag{0};  // age of the oldest of them
  std::uint64_t written = 0;
  std::uint64_t write_errors = 0;
  std::uint32_t slots_waiting = 0;  // slots whose state is on the way
  std::uint64_t parked = 0;         // checks waiting for them
  std::uint64_t handoffs_sent = 0, handoffs_received = 0;
  std::uint64_t handoff_entries_sent = 0, handoff_entries_received = 0;
  std::uint64_t handoff_failures = 0;
  std::uint64_t recovery_timeouts = 0;
  bool draining = false, drained = false;
};

// What one flush wrote (Client::snapshot).
struct SnapshotResult {
  std::uint64_t written = 0;  // entries confirmed by the snapshot store
  std::uint64_t pending = 0;  // entries still waiting afterwards
};

// The gossip keyring (Client::keyring, docs/security.md).
enum class KeyringOp : std::uint8_t { kList, kInstall, kUse, kRemove };
struct KeyringKey {
  std::string id;  // 8 hex digits; keys themselves never leave a node
  bool primary = false;
};

// The rules version a node runs (docs/api.md, "Rules across the cluster"): every member runs
// the newest one; ordered by counter, then digest.
// (This header is C++17: the comparisons are written out.)
struct RulesVersion {
  std::uint64_t counter = 0;
  std::uint64_t digest = 0;
  friend bool operator<(const RulesVersion& a, const RulesVersion& b) {
    return a.counter != b.counter ? a.counter < b.counter : a.digest < b.digest;
  }
  friend bool operator==(const RulesVersion& a, const RulesVersion& b) {
    return a.counter == b.counter && a.digest == b.digest;
  }
  friend bool operator!=(const RulesVersion& a, const RulesVersion& b) { return !(a == b); }
  friend bool operator>(const RulesVersion& a, const RulesVersion& b) { return b < a; }
  friend bool operator<=(const RulesVersion& a, const RulesVersion& b) { return !(b < a); }
  friend bool operator>=(const RulesVersion& a, const RulesVersion& b) { return !(a < b); }
};
THROTTLEX_CLIENT_API std::string formatRulesVersion(const RulesVersion& v);  // "7.3f9a01c2d4e5b6a7"

// What a rules change made.
struct RulesChange {
  RulesVersion version;     // the rules version the node runs after the change
  bool done = true;         // deleteRule: the rule existed
  std::uint32_t count = 0;  // reloadRules: the rules loaded
};

struct NodeInfo {
  std::string node_id;
  std::string version;  // software version
  std::uint16_t protocol_version = 0;
  std::string http_address;
  std::string rpc_address;
  std::string metrics_address;
  std::chrono::milliseconds uptime{0};
  std::uint64_t keys = 0;
  std::uint64_t evictions = 0;
  std::uint32_t rules = 0;
  RulesVersion rules_version;
  std::string rules_origin;  // the node that made that version; empty: a rules file as loaded
  std::int64_t rules_made_unix_ms = 0;
  std::vector<Member> members;  // the cluster as this node sees it; empty: no cluster
  PersistenceInfo persistence;
};

struct KeyInspection {
  bool found = false;                  // the node holds state for this key
  std::optional<Algorithm> algorithm;  // of the stored state (when found)
  std::uint64_t limit = 0;
  std::uint64_t remaining = 0;
  std::chrono::nanoseconds reset_after{0};
  std::int64_t expiry_unix_ms = 0;   // when the stored state stops mattering
  std::uint64_t count = 0;           // windows: the current window's count
  std::uint64_t previous_count = 0;  // sliding window: the previous window's count
};

// Counters since connect(); thread-safe snapshot.
struct ClientStats {
  std::uint64_t calls = 0;      // RPC calls sent, admin calls included (a batch is one call)
  std::uint64_t checks = 0;     // checks sent in those calls (a retried check counts again)
  std::uint64_t fallbacks = 0;  // checks answered by on_unavailable
  std::uint64_t failovers = 0;  // checks re-sent to another node
  std::uint64_t nodes_marked_down = 0;
  // Routing (counted while a ring is known; a retried check counts again):
  std::uint64_t checks_to_owner = 0;      // checks sent to their key's owner
  std::uint64_t checks_not_to_owner = 0;  // sent elsewhere: the owner was down, tried or unknown
  std::uint64_t ring_members = 0;         // members of the ring in use; 0: not routing
  std::uint64_t reports_failed = 0;       // reports reportAsync() could not deliver
  std::uint64_t checks_shed_locally = 0;  // answered here by overload_throttle, not sent
};

class THROTTLEX_CLIENT_API Client {
 public:
  using Callback = std::function<void(CheckResult)>;
  // A per-call deadline; nullopt: ClientOptions::deadline (admin_deadline for admin calls).
  using Deadline = std::optional<std::chrono::milliseconds>;

  // Validates the options and starts the client's thread. Unless lazy_connect, waits until a
  // node answers; errors: kInvalidArgument (bad options), kUnavailable (no node reachable).
  static Result<std::unique_ptr<Client>> connect(ClientOptions options);
  ~Client();  // completes what is still pending (as on_unavailable says) and joins the thread
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  CheckResult check(const CheckSpec& spec, Deadline deadline = std::nullopt);
  // An empty `done` sends nothing. A deadline must be positive (else: kInvalidArgument).
  void checkAsync(CheckSpec spec, Callback done, Deadline deadline = std::nullopt);
  std::future<CheckResult> checkAsync(CheckSpec spec, Deadline deadline = std::nullopt);
  // Results in request order. Any size: larger sets are split into calls of max_batch.
  std::vector<CheckResult> checkBatch(std::vector<CheckSpec> specs,
                                      Deadline deadline = std::nullopt);
  // All or nothing (docs/api.md, "Atomic batches"): allowed only if every check is; when one is
  // not, the node gives the admitted ones back before answering. At most max_batch checks, sent as
  // one call to one node (which forwards to the owners); no on_unavailable fallback: a node that
  // cannot be reached is an error (kUnavailable / kDeadlineExceeded). A malformed check refuses
  // the batch (kInvalidArgument), nothing spent. Default deadline: `deadline`.
  Result<AtomicResult> checkAtomic(const std::vector<CheckSpec>& specs,
                                   Deadline deadline = std::nullopt);

  // Admin calls go to one node (the first that answers). inspect() and reset() go to the key's
  // owner when a ring is known (see route_to_owner). A rules change is made on the node called,
  // as a new rules version that node sends to every member (docs/api.md, "Rules across the
  // cluster"); the answer carries that version, which NodeInfo::rules_version shows on each.
  Result<NodeInfo> nodeInfo(Deadline deadline = std::nullopt);
  Result<std::vector<Rule>> listRules(Deadline deadline = std::nullopt);
  Result<RulesChange> setRule(const Rule& rule, Deadline deadline = std::nullopt);
  // `done`: false when there was no such rule (nothing changed).
  Result<RulesChange> deleteRule(const std::string& name, Deadline deadline = std::nullopt);
  // `count`: the rules the node's file holds.
  Result<RulesChange> reloadRules(Deadline deadline = std::nullopt);
  Result<KeyInspection> inspect(const CheckSpec& spec, Deadline deadline = std::nullopt);
  Result<bool> reset(const CheckSpec& spec, Deadline deadline = std::nullopt);  // existed?
  // Writes the node's pending snapshot entries now; answers when the store confirmed them
  // (kUnavailable: no snapshot store, or it is unreachable).
  Result<SnapshotResult> snapshot(Deadline deadline = std::nullopt);
  // Tells the node to hand its slots over, leave the cluster and exit.
  Status drain(Deadline deadline = std::nullopt);
  // Lists the node's gossip keyring, or installs (`key`: base64), makes primary or removes
  // (`key`: id or key) one key on that node; the keyring afterwards. kUnavailable: the node
  // runs without a keyring.
  Result<std::vector<KeyringKey>> keyring(KeyringOp op, const std::string& key = {},
                                          Deadline deadline = std::nullopt);

  // Adaptive rules (docs/adaptive.md): how admitted calls went. report() sends one call (at most
  // 1000 reports, all or nothing: kNotFound for an unknown rule, kInvalidArgument for a rule that
  // is not adaptive or a bad latency) and returns how many were taken. reportAsync() sends without
  // waiting; what fails is counted in ClientStats::reports_failed.
  Result<std::uint32_t> report(const std::vector<Report>& reports,
                               Deadline deadline = std::nullopt);
  void reportAsync(std::vector<Report> reports);

  ClientStats stats() const;

  struct Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Times one admitted call of an adaptive rule and reports it when it goes out of scope
// (reportAsync: the caller never waits). The outcome is kOk unless set, or kError when the scope
// is left by an exception.
//
//   if (client.check({.key = user, .rule = "backend"}).allowed) {
//     client::ScopedReport timed(client, "backend");
//     if (!callBackend()) timed.setOutcome(client::ReportOutcome::kError);
//   }
class THROTTLEX_CLIENT_API ScopedReport {
 public:
  ScopedReport(Client& client, std::string rule);
  ~ScopedReport();
  ScopedReport(const ScopedReport&) = delete;
  ScopedReport& operator=(const ScopedReport&) = delete;

  void setOutcome(ReportOutcome outcome) { outcome_ = outcome; }

 private:
  Client& client_;
  std::string rule_;
  std::int64_t start_ns_;  // on KJ's monotonic clock, which the client's timers use too
  std::optional<ReportOutcome> outcome_;
  int exceptions_;  // std::uncaught_exceptions() at construction
};

}  // namespace throttlex::client
