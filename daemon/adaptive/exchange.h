// The node side of adaptive rules (docs/adaptive.md): twice per interval of each adaptive rule
// (10% and 60% into it, wall-clock aligned), a thread of its own takes the rule's digest from its
// cell, sends it to the rule's controller (the ring's owner of adaptiveSlot(rule); itself when it
// owns it, or when there is no ring) and applies the effective limit the controller answers. One
// call per controller node per round, whatever the number of rules and reports.
//
// A controller that cannot be reached costs nothing on the check path: the digest goes back into
// the cell (sent with the next one) and the limit stays as it was.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "daemon/adaptive/controller.h"
#include "daemon/routing/ring_view.h"
#include "limiter/mutex.h"

namespace throttlex {

// Sends this node's digests to the controller at `address` and returns its verdicts (one per
// digest, in order), or an error (unreachable, refused).
using DigestSender = std::function<Result<std::vector<RuleVerdict>>(
    const std::string& address, std::span<const RuleDigest> digests)>;

struct ExchangeStats {
  std::uint64_t rounds = 0;
  std::uint64_t calls = 0;     // calls to other nodes
  std::uint64_t failures = 0;  // calls that failed (their digests wait for the next round)
};

class AdaptiveExchange {
 public:
  // `ring` may be null (no cluster: this node controls every rule); while it holds no view yet,
  // rounds do nothing (reports wait in the cells).
  AdaptiveExchange(LimiterService& service, AdaptiveController& controller, const RingHolder* ring,
                   const Clock& clock, DigestSender send);
  ~AdaptiveExchange();
  AdaptiveExchange(const AdaptiveExchange&) = delete;
  AdaptiveExchange& operator=(const AdaptiveExchange&) = delete;

  void start();  // the thread
  void stop();   // idempotent

  // One round: every rule whose send time came (every adaptive rule when `all`), then the
  // controller's step. The thread's body; tests call it directly.
  void round(bool all = false);
  ExchangeStats stats() const;

 private:
  void run();
  Time nextWake() const;  // the earliest send or step due

  LimiterService& service_;
  AdaptiveController& controller_;
  const RingHolder* const ring_;
  const Clock& clock_;
  const DigestSender send_;

  std::map<std::string, Time, std::less<>> next_send_;  // round()'s caller only

  mutable Mutex mu_;
  std::condition_variable wake_;
  bool stopping_ GUARDED_BY(mu_) = false;
  ExchangeStats stats_ GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace throttlex
