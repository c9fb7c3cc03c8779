# The ThrottleX wire contract for clients, throttlectl and peers (which forward checks to owners).
#
# Rules for changing this file: ONLY APPEND. Field ordinals, enum values and method ordinals are
# part of the protocol; never renumber, retype or remove. Every request and response carries the
# protocol version so a node can refuse what it does not understand.
@0xa979cec6a16deb57;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("throttlex::proto");

const protocolVersion :UInt16 = 1;

# Numeric values equal limiter/limit.h's Algorithm.
enum Algorithm {
  unspecified @0;
  tokenBucket @1;
  leakyBucket @2;
  fixedWindow @3;
  slidingWindow @4;
  gcra @5;
  concurrency @6;        # leases held at once (docs/concurrency.md)
}

enum ErrorCode {
  none @0;
  invalidArgument @1;
  notFound @2;
  unavailable @3;
  deadlineExceeded @4;
  resourceExhausted @5;
  internal @6;
  unsupportedVersion @7;
  # Node to node only: a forwarded check was not decided because its decide-by time had passed
  # when it came up (the sender may already have had it decided elsewhere). Nothing was spent;
  # the sender routes it again. Clients never see it.
  notDecided @8;
  # The connection's certificate does not grant this call (docs/security.md: roles). Nothing
  # was done.
  permissionDenied @9;
}

struct Error {
  code @0 :ErrorCode;
  message @1 :Text;
}

struct LimitSpec {
  algorithm @0 :Algorithm;
  limit @1 :UInt64;
  periodMs @2 :UInt64;
  burst @3 :UInt64;      # 0: same as limit
}

struct CheckRequest {
  key @0 :Text;
  rule @1 :Text;         # a named rule; empty: use `limit`
  limit @2 :LimitSpec;   # the inline limit
  hits @3 :UInt64 = 1;   # 0 reads without consuming
  # Signed companion of `hits` (appended): when not 0 it replaces `hits`, and a negative value gives
  # that many units back (a refund). Senders of a refund set `hits` to 0, so a node that predates
  # this field only reads the key instead of spending.
  hitsSigned @4 :Int64;
  # Concurrency rules (appended): the lease to release instead of acquiring one; 0: none.
  # Senders of a release set `hits` to 0, so a node that predates this field only reads the key.
  release @5 :UInt64;
  # What an overloaded node sheds first (appended; docs/overload.md). Read at entry only.
  priority @6 :Priority;
  # The caller's budget (appended): how many ms it waits for the answer from sending; a check that
  # waited longer in the node is not forwarded but answered as shed (reason deadline). 0: none.
  deadlineMs @7 :UInt32;
  # Concurrency rules (appended): the lease to renew instead of acquiring one; 0: none. Senders of
  # a renewal set `hits` to 0, so a node that predates this field only reads the key (and answers
  # `renewed` none: not renewed).
  renew @8 :UInt64;
}

# Numeric values equal daemon/service/overload.h's Priority.
enum Priority {
  normal @0;
  critical @1;               # never shed for load
  sheddable @2;              # shed first
}

# Why a check was answered by its rule's overload policy instead of decided.
enum ShedReason {
  none @0;
  overload @1;
  deadline @2;
}

# What a release found (numeric values equal limiter/lease.h's LeaseRelease).
enum LeaseRelease {
  none @0;               # the check was no release
  released @1;
  unknown @2;            # no such lease of this key
  expired @3;            # it expired before the release
  alreadyReleased @4;
}

# What a renewal found (numeric values equal limiter/lease.h's LeaseRenewal).
enum LeaseRenewal {
  none @0;               # the check was no renewal
  renewed @1;            # held; it now expires at leaseExpiryMs
  unknown @2;            # no such lease of this key
  expired @3;            # it expired before the renewal (acquire anew)
  released @4;           # it was released
}

# How the answer was reached; the cluster adds forwarding and degraded mode.
enum Route {
  local @0;
  forwarded @1;
  degraded @2;
}

struct CheckResult {
  error @0 :Error;            # code none: the fields below are valid
  allowed @1 :Bool;           # what the caller must do (always true for a shadow rule)
  decidedAllowed @2 :Bool;    # the limiter's real decision
  shadow @3 :Bool;
  limit @4 :UInt64;
  remaining @5 :UInt64;
  resetAfterNs @6 :Int64;
  retryAfterNs @7 :Int64;     # 0 when allowed; -1: never (cost above capacity)
  policy @8 :Text;            # rule name, or "default" for inline limits
  periodMs @9 :UInt64;
  route @10 :Route;
  refunded @11 :Bool;         # an atomic batch was denied and this admitted check given back
  # Concurrency rules (appended): the lease an allowed acquire holds (0: none), when it expires
  # (Unix ms), and what a release found.
  leaseId @12 :UInt64;
  leaseExpiryMs @13 :Int64;
  released @14 :LeaseRelease;
  # Shed (appended): the node answered by the rule's overload policy instead of deciding.
  shed @15 :ShedReason;
  # Renewal (appended): what a renewal found.
  renewed @16 :LeaseRenewal;
}

interface Limiter {
  check @0 (version :UInt16, request :CheckRequest) -> (version :UInt16, result :CheckResult);
  # At most 1000 checks per call; results in request order. `hops`: how many nodes forwarded these
  # checks already (0 from clients); a node forwards a check on to its owner only while hops is
  # below the hop limit (2), so nodes whose views of the ring disagree never pass checks in circles.
  # `decideByMs` (peers only; 0: none): wall-clock ms since the Unix epoch after which the sender
  # may have these checks decided elsewhere; a receiver that comes to them later decides none of
  # them and answers `notDecided` (docs/architecture.md, "Exact whatever the timing").
  # `atomic` (clients only; appended): all or nothing — allowed only if every check is; when one is
  # not, the admitted ones are given back before the answer, `deniedBy` names the first check not
  # allowed (-1: the batch was allowed) and the given-back results say `refunded`. A malformed
  # check refuses the whole atomic batch (error), nothing spent.
  # `compactShed` (clients only; appended): the caller reads a batch that an overloaded node shed
  # whole (docs/overload.md) as `shedAnswers`, one per rule, shed reason and priority, and
  # `shedIndex`, one byte per check naming its answer, with `results` empty. Without it every
  # check gets a result of its own.
  checkBatch @1 (version :UInt16, checks :List(CheckRequest), hops :UInt8, decideByMs :Int64,
                 atomic :Bool, compactShed :Bool)
      -> (version :UInt16, error :Error, results :List(CheckResult), deniedBy :Int32 = -1,
          shedAnswers :List(CheckResult), shedIndex :Data);
  # Node to node: the state of slots the sender no longer decides (ring change, drain). `entries`:
  # 32 bytes each (key hash hi, lo, state w0, w1; little-endian), merged keeping the more consumed
  # state. A handoff may take several calls; the last one lists the slots, which the receiver then
  # decides (docs/persistence.md).
  handoff @2 (version :UInt16, from :Text, slots :List(UInt16), entries :Data)
      -> (error :Error, merged :UInt64);
  # Node to node (adaptive rules, docs/adaptive.md): the sender's digests of the rules this node
  # controls; answers one verdict per digest, in order. At most 10000 digests per call.
  adaptiveExchange @3 (version :UInt16, from :Text, digests :List(AdaptiveDigest))
      -> (error :Error, verdicts :List(AdaptiveVerdict));
  # Applications: how admitted calls of adaptive rules went. All or nothing: an unknown rule
  # (notFound), a rule that is not adaptive or a bad latency (invalidArgument) refuses the whole
  # call. At most 1000 reports per call.
  report @4 (version :UInt16, reports :List(Report)) -> (error :Error, taken :UInt32);
  # Node to node (rules across the cluster, docs/api.md): the sender's rules version, and its
  # rules when it sends them (a change made there, or the receiver was behind). The receiver runs
  # a sent version that is newer than its own; it answers the version it runs, and its rules
  # when they are newer than the sender's.
  syncRules @5 (version :UInt16, from :Text, rules :RulesVersion, doc :RulesDoc)
      -> (error :Error, rules :RulesVersion, doc :RulesDoc);
}

# Rules versions (daemon/service/rules_doc.h): ordered by counter, then digest.
struct RulesVersion {
  counter @0 :UInt64;
  digest @1 :UInt64;           # FNV-1a of the sources and changes
}

# The rules a node runs, as every node builds them: the rules files' texts, then the run-time
# changes in order. At most 256 sources, 10000 changes, 4 MiB of text.
struct RulesDoc {
  version @0 :RulesVersion;
  origin @1 :Text;             # the node that made the version
  madeMs @2 :Int64;            # when (Unix ms)
  sources @3 :List(RulesSource);
  changes @4 :List(RulesChange);
}

struct RulesSource {
  name @0 :Text;               # the file it was read from
  text @1 :Text;               # a rules file of either shape
}

struct RulesChange {
  rule @0 :Text;
  yaml @1 :Text;               # the rule as a rules-file mapping; empty: the rule was deleted
}

# Numeric values equal daemon/service/adaptive.h's ReportOutcome.
enum ReportOutcome {
  ok @0;
  error @1;
  timeout @2;
  overloaded @3;
}

struct Report {
  rule @0 :Text;
  latencyNs @1 :Int64 = -1;  # -1: no latency, only the outcome counts; else 0..1 hour
  outcome @2 :ReportOutcome;
}

# One node's signals for one adaptive rule over (about) one interval.
struct AdaptiveDigest {
  rule @0 :Text;
  buckets @1 :List(UInt64);    # latency histogram: (bucket << 32 | count), non-empty buckets only
  outcomes @2 :List(UInt64);   # reports per ReportOutcome, in its order
  admitted @3 :UInt64;         # checks of the rule decided on the sender
  limited @4 :UInt64;
  knownLimit @5 :UInt64;       # the effective limit the sender applies now (0: none)
}

struct AdaptiveVerdict {
  rule @0 :Text;
  controlled @1 :Bool;         # false: the rule is unknown or not adaptive on the controller
  limit @2 :UInt64;            # the effective limit
  reason @3 :Text;             # the signal that moved (or held) it last
  reports @4 :UInt64;          # the signals of the interval it was decided on
  latencyNs @5 :Int64 = -1;    # at the rule's percentile; -1: none reported
  errorRate @6 :Float64;
}

# What a node decides when a key's owner cannot be reached (daemon/service/rules.h).
enum DegradedPolicy {
  share @0;
  allow @1;
  deny @2;
}

# What a check of the rule answers when the node sheds it (daemon/service/rules.h).
enum OverloadPolicy {
  allow @0;
  deny @1;
}

struct Rule {
  name @0 :Text;
  limit @1 :LimitSpec;         # an adaptive rule's own (starting) limit
  shadow @2 :Bool;
  degraded @3 :DegradedPolicy;
  # Adaptive rules (docs/adaptive.md): the rule's adaptive block, and (listRules only) where its
  # limit stands on the answering node. Unset for other rules. setRule ignores both: adaptive
  # rules come from the rules file.
  adaptive @4 :AdaptiveSpec;
  adaptiveState @5 :AdaptiveState;
  overload @6 :OverloadPolicy;  # appended; setRule sets it
}

# Numeric values equal daemon/service/adaptive.h's ControlLaw.
enum ControlLaw {
  aimd @0;
  gradient @1;
}

struct AdaptiveSpec {
  min @0 :UInt64;
  max @1 :UInt64;
  latencyTargetMs @2 :UInt64;  # 0: no latency signal
  percentile @3 :Float64;      # a fraction: 0.9 for p90
  errorRateMax @4 :Float64;    # a fraction; 0: no error signal
  law @5 :ControlLaw;
  intervalMs @6 :UInt64;
  backoff @7 :Float64;
  increase @8 :UInt64;         # 0: max / 100
  minReports @9 :UInt64;
}

struct LimitChange {
  atMs @0 :Int64;              # Unix ms
  limit @1 :UInt64;
  reason @2 :Text;
}

struct AdaptiveState {
  limit @0 :UInt64;            # the effective limit this node applies
  reason @1 :Text;             # the signal that moved (or held) it last
  reports @2 :UInt64;          # the signals of the interval it was decided on
  latencyNs @3 :Int64 = -1;
  errorRate @4 :Float64;
  history @5 :List(LimitChange);  # the last changes, oldest first
  controlledHere @6 :Bool;     # the answering node is the rule's controller
  reported @7 :List(UInt64);   # reports received by the answering node, per ReportOutcome
}

# A cluster member as the answering node sees it.
struct Member {
  nodeId @0 :Text;
  state @1 :Text;              # alive, suspect, dead, left
  gossipAddress @2 :Text;
  rpcAddress @3 :Text;
  httpAddress @4 :Text;
  incarnation @5 :UInt64;
}

struct NodeInfo {
  nodeId @0 :Text;
  version @1 :Text;            # software version
  protocolVersion @2 :UInt16;
  httpAddress @3 :Text;
  rpcAddress @4 :Text;
  metricsAddress @5 :Text;
  uptimeMs @6 :UInt64;
  keys @7 :UInt64;             # live entries in the store
  evictions @8 :UInt64;
  rules @9 :UInt32;
  members @10 :List(Member);   # the cluster as this node sees it (itself included)
  persistence @11 :Persistence;
  rulesVersion @12 :RulesVersion;  # the rules version the node runs
  rulesOrigin @13 :Text;           # the node that made it (empty: the node's own rules file)
  rulesMadeMs @14 :Int64;
}

# Snapshots, recovery and handoffs of one node (docs/persistence.md).
struct Persistence {
  redis @0 :Text;              # host:port of the snapshot store; empty: memory only
  connected @1 :Bool;
  pending @2 :UInt64;          # changed entries not yet written
  lagMs @3 :UInt64;            # age of the oldest of them
  written @4 :UInt64;          # entries written since start
  writeErrors @5 :UInt64;
  slotsWaiting @6 :UInt32;     # slots whose state is on the way (their checks wait)
  parked @7 :UInt64;           # checks waiting for them right now
  handoffsSent @8 :UInt64;
  handoffsReceived @9 :UInt64;
  handoffEntriesSent @10 :UInt64;
  handoffEntriesReceived @11 :UInt64;
  handoffFailures @12 :UInt64;
  recoveryTimeouts @13 :UInt64; # slots opened by their deadline before all state arrived
  draining @14 :Bool;
  drained @15 :Bool;
}

struct KeyInspection {
  error @0 :Error;
  found @1 :Bool;
  algorithm @2 :Algorithm;
  limit @3 :UInt64;
  remaining @4 :UInt64;
  resetAfterNs @5 :Int64;
  expiryMs @6 :Int64;          # when the stored state stops mattering (Unix ms)
  count @7 :UInt64;            # windows: current window's count
  previousCount @8 :UInt64;    # sliding window: previous window's count
}

interface Admin {
  nodeInfo @0 (version :UInt16) -> (info :NodeInfo);
  listRules @1 (version :UInt16) -> (rules :List(Rule));
  # Rules changes apply across the cluster: each makes a new rules version on the node called
  # (answered in `rules`), which goes to every member (docs/api.md, "Rules across the cluster").
  setRule @2 (version :UInt16, rule :Rule) -> (error :Error, rules :RulesVersion);
  deleteRule @3 (version :UInt16, name :Text) -> (error :Error, deleted :Bool, rules :RulesVersion);
  reloadRules @4 (version :UInt16) -> (error :Error, count :UInt32, rules :RulesVersion);
  inspectKey @5 (version :UInt16, request :CheckRequest) -> (inspection :KeyInspection);
  resetKey @6 (version :UInt16, request :CheckRequest) -> (error :Error, existed :Bool);
  # Writes every pending snapshot entry now and answers when the store confirmed them.
  snapshot @7 (version :UInt16) -> (error :Error, written :UInt64, pending :UInt64);
  # Hands this node's slots to the nodes that take them over, leaves the cluster and exits (as
  # SIGTERM). Answers once the node has started draining.
  drain @8 (version :UInt16) -> (error :Error);
  # The gossip keyring (docs/security.md): list it, or install / make primary / remove one key,
  # on this node only (throttlectl applies a change to every member). `key` is a base64 key for
  # install, a key id (8 hex digits) or the key for use and remove. `keys` is the keyring after
  # the call. Refused (unavailable) on a node started without --gossip-keyring.
  keyring @9 (version :UInt16, op :KeyringOp, key :Text) -> (error :Error, keys :List(KeyringKey));
}

enum KeyringOp {
  list @0;
  install @1;
  use @2;
  remove @3;
}

struct KeyringKey {
  id @0 :Text;        # 8 hex digits, derived from the key; the key itself never leaves the node
  primary @1 :Bool;   # the key that seals this node's packets
}

# What a node's RPC port bootstraps: cast it to Limiter or Admin.
interface Node extends(Limiter, Admin) {}
