// Rules across the cluster (docs/api.md, "Rules across the cluster"): every member runs the
// newest rules version any member made (daemon/service/rules_doc.h).
//
// A thread of its own sends this node's version to one other member per interval, in turn; a
// member that is behind gets the rules, a member that is ahead answers with its own. A change
// made here (reload, rule set or deleted) goes to every member at once. A node that starts
// with --join (`joining`) asks every member for its rules as soon as it sees them, before it
// reports ready, and runs the newest it is answered — even one that orders below its own file's
// version, which it never sends. So a change reaches every member in one call, a member that
// missed it catches up within an interval of a round reaching it, and a node that joins or
// restarts runs the cluster's rules, not its file.
//
// Nothing here is on the check path: a member that cannot be reached costs this thread a call
// that times out.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "daemon/base/node_info.h"
#include "daemon/routing/ring_view.h"
#include "daemon/service/limiter_service.h"
#include "daemon/service/rules_doc.h"
#include "limiter/mutex.h"

namespace throttlex {

// What a member answers: the version it runs, and its rules when they are newer than the
// caller's.
struct RulesAnswer {
  RulesVersion version;
  std::optional<RulesDoc> doc;
};

// Sends this node's version (and its rules when `doc` is not null) to the member at `address`.
using RulesSender = std::function<Result<RulesAnswer>(
    const std::string& address, const RulesVersion& mine, const RulesDoc* doc)>;

class RulesSync {
 public:
  static constexpr std::chrono::milliseconds kInterval{1000};

  // `ring` may be null (no cluster: nothing to send). `service` and `ring` must outlive this.
  // `joining`: the node started with --join; its first round takes the cluster's rules.
  RulesSync(LimiterService& service, const RingHolder* ring, RulesSender send, bool joining = false,
            std::chrono::milliseconds interval = kInterval);
  ~RulesSync();
  RulesSync(const RulesSync&) = delete;
  RulesSync& operator=(const RulesSync&) = delete;

  void start();  // the thread
  void stop();   // idempotent
  // A change made here: the thread sends it to every member now.
  void changed();
  // Until a first round (every other member of the ring asked) got an answer from at least one
  // member (true), or `timeout` (false).
  bool waitFirstRound(std::chrono::milliseconds timeout);

  // One round: the next member in turn, or every member (`everyone`, with this node's rules
  // when `push`). The thread's body; tests call it directly. True when a member answered.
  bool round(bool everyone, bool push = false);
  // A joining node's first round: asks every member for its rules and runs the newest answered
  // in place of its own file's. True when a member answered.
  bool join();
  // Another member's call (syncRules): runs `doc` when it is newer; answers this node's version,
  // with its rules when they are newer than `theirs`.
  RulesAnswer answer(const RulesVersion& theirs, const RulesDoc* doc);

  RulesSyncStats stats() const;

 private:
  void run();
  bool stopping() const;
  std::vector<std::string> others() const;  // the other ring members' RPC addresses
  // One call; true when the member answered.
  bool exchange(const std::string& address, bool push);
  void count(bool answered);
  void adopt(const RulesDoc& doc, const std::string& via, bool joining = false);

  LimiterService& service_;
  const RingHolder* const ring_;
  const RulesSender send_;
  const bool joining_;
  const std::chrono::milliseconds interval_;
  std::size_t next_ = 0;  // the round-robin turn (round()'s caller only)

  mutable Mutex mu_;
  std::condition_variable wake_;
  bool stopping_ GUARDED_BY(mu_) = false;
  bool push_pending_ GUARDED_BY(mu_) = false;
  bool first_round_ GUARDED_BY(mu_) = false;   // every member was asked once, one answered
  RulesVersion last_refused_ GUARDED_BY(mu_);  // not built again, logged once
  RulesSyncStats stats_ GUARDED_BY(mu_);       // stats() fills in the counter
  std::thread thread_;
};

}  // namespace throttlex
