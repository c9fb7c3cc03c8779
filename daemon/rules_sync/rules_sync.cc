#include "daemon/rules_sync/rules_sync.h"

#include "daemon/base/log.h"

namespace throttlex {

RulesSync::RulesSync(LimiterService& service, const RingHolder* ring, RulesSender send,
                     bool joining, std::chrono::milliseconds interval)
    : service_(service),
      ring_(ring),
      send_(std::move(send)),
      joining_(joining),
      interval_(interval) {}

RulesSync::~RulesSync() {
  stop();
}

void RulesSync::start() {
  thread_ = std::thread([this] { run(); });
}

void RulesSync::stop() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool RulesSync::stopping() const {
  MutexLock lock(mu_);
  return stopping_;
}

void RulesSync::changed() {
  {
    MutexLock lock(mu_);
    push_pending_ = true;
  }
  wake_.notify_all();
}

bool RulesSync::waitFirstRound(std::chrono::milliseconds timeout) {
  MutexLock lock(mu_);
  return wake_.wait_for(lock.native(), timeout, [this]() REQUIRES(mu_) {
    return first_round_ || stopping_;
  }) && first_round_;
}

std::vector<std::string> RulesSync::others() const {
  std::vector<std::string> out;
  if (ring_ == nullptr) return out;
  const std::shared_ptr<const RingView> view = ring_->snapshot();
  if (!view) return out;
  for (std::uint32_t i = 0; i < view->rpc_address.size(); ++i) {
    if (i != view->self && !view->rpc_address[i].empty()) out.push_back(view->rpc_address[i]);
  }
  return out;
}

bool RulesSync::round(bool everyone, bool push) {
  const std::vector<std::string> members = others();
  if (members.empty()) return false;
  if (!everyone) return exchange(members[next_++ % members.size()], false);
  bool answered = false;
  for (const std::string& address : members) {
    if (stopping()) break;
    answered = exchange(address, push) || answered;
  }
  return answered;
}

bool RulesSync::join() {
  std::optional<RulesDoc> newest;
  std::string from;
  for (const std::string& address : others()) {
    if (stopping()) break;
    // As a node without rules: every member answers with its own.
    auto answer = send_(address, RulesVersion{}, nullptr);
    count(answer.ok());
    if (!answer || !answer->doc) continue;
    if (!newest || newest->version < answer->doc->version) {
      newest = std::move(answer->doc);
      from = address;
    }
  }
  if (!newest) return false;
  adopt(*newest, from, /*joining=*/true);
  return true;
}

void RulesSync::count(bool answered) {
  MutexLock lock(mu_);
  ++stats_.calls;
  if (!answered) ++stats_.failures;
}

bool RulesSync::exchange(const std::string& address, bool push) {
  const std::shared_ptr<const RulesDoc> mine = service_.rulesDoc();
  auto answer = send_(address, mine->version, push ? mine.get() : nullptr);
  count(answer.ok());
  if (!answer) return false;
  if (answer->doc) {
    adopt(*answer->doc, address);
  } else if (!push && answer->version < mine->version) {
    exchange(address, true);  // the member is behind: send it the rules
  }
  return true;
}

void RulesSync::adopt(const RulesDoc& doc, const std::string& via, bool joining) {
  {
    MutexLock lock(mu_);
    if (doc.version == last_refused_) return;  // it did not load here, and will not now
  }
  const Result<bool> adopted =
      service_.adoptRules(doc, joining ? RulesAdoption::kReplaceFile : RulesAdoption::kNewer);
  MutexLock lock(mu_);
  if (!adopted) {
    ++stats_.refused;
    last_refused_ = doc.version;
    logError("rules from " + via + " refused, keeping version " +
             formatRulesVersion(service_.rulesDoc()->version) + ": " + adopted.error().message);
    return;
  }
  if (!*adopted) return;
  ++stats_.adopted;
  logInfo("rules version " + formatRulesVersion(doc.version) + " (made by " +
          (doc.origin.empty() ? std::string("a rules file") : doc.origin) + ", from " + via +
          ") now running");
}

RulesAnswer RulesSync::answer(const RulesVersion& theirs, const RulesDoc* doc) {
  if (doc != nullptr) adopt(*doc, doc->origin.empty() ? "a member" : doc->origin);
  const std::shared_ptr<const RulesDoc> mine = service_.rulesDoc();
  RulesAnswer a{mine->version, std::nullopt};
  if (theirs < mine->version) a.doc = *mine;
  return a;
}

RulesSyncStats RulesSync::stats() const {
  RulesSyncStats s;
  {
    MutexLock lock(mu_);
    s = stats_;
  }
  s.counter = service_.rulesDoc()->version.counter;
  return s;
}

void RulesSync::run() {
  for (;;) {
    bool push = false;
    bool first = false;
    {
      MutexLock lock(mu_);
      if (stopping_) return;
      push = std::exchange(push_pending_, false);
      first = !first_round_;
    }
    // Until a member answered, every member is asked (a joining node takes their rules); then
    // one a turn, and every member after a change here.
    const bool answered = first && joining_ && !push ? join() : round(push || first, push);
    if (first && answered) {
      MutexLock lock(mu_);
      first_round_ = true;
      wake_.notify_all();
    }
    MutexLock lock(mu_);
    // Before a member answered, look again soon: a joining node waits for this.
    const auto wait = first && !answered ? std::chrono::milliseconds(50) : interval_;
    if (wake_.wait_for(lock.native(), wait,
                       [this]() REQUIRES(mu_) { return stopping_ || push_pending_; }) &&
        stopping_) {
      return;
    }
  }
}

}  // namespace throttlex
