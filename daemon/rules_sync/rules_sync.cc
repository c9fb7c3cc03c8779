#include "daemon/rules_sync/rules_sync.h"

#include "daemon/base/log.h"

namespace throttlex {

RulesSync::RulesSync(LimiterService& service, const RingHolder* ring, RulesSender send,
                     std::chrono::milliseconds interval)
    : service_(service), ring_(ring), send_(std::move(send)), interval_(interval) {}

RulesSync::~RulesSync() {
  stop();
}

void RulesSync::start() {
  thread_ = std::thread([this] { run(); });
}

void RulesSync::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RulesSync::changed() {
  {
    std::lock_guard lock(mu_);
    push_pending_ = true;
  }
  wake_.notify_all();
}

bool RulesSync::waitFirstRound(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return wake_.wait_for(lock, timeout, [this] { return first_round_ || stopping_; }) &&
         first_round_;
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
  if (everyone) {
    for (const std::string& address : members) exchange(address, push);
  } else {
    exchange(members[next_++ % members.size()], false);
  }
  return true;
}

void RulesSync::exchange(const std::string& address, bool push) {
  const std::shared_ptr<const RulesDoc> mine = service_.rulesDoc();
  auto answer = send_(address, mine->version, push ? mine.get() : nullptr);
  {
    std::lock_guard lock(mu_);
    ++stats_.calls;
    if (!answer) ++stats_.failures;
  }
  if (!answer) return;
  if (answer->doc) {
    adopt(*answer->doc, address);
  } else if (!push && answer->version < mine->version) {
    exchange(address, true);  // the member is behind: send it the rules
  }
}

void RulesSync::adopt(const RulesDoc& doc, const std::string& via) {
  const Result<bool> adopted = service_.adoptRules(doc);
  std::lock_guard lock(mu_);
  if (!adopted) {
    ++stats_.refused;
    if (std::exchange(last_refused_, doc.version) != doc.version) {
      logError("rules from " + via + " refused, keeping version " +
               formatRulesVersion(service_.rulesDoc()->version) + ": " + adopted.error().message);
    }
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
  std::lock_guard lock(mu_);
  return stats_;
}

void RulesSync::run() {
  for (;;) {
    bool push = false;
    bool first = false;
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      push = std::exchange(push_pending_, false);
      first = !first_round_;
    }
    // Until every member was asked once, every member is asked (a joining node); then one a turn.
    const bool asked = round(push || first, push);
    if (first && asked) {
      std::lock_guard lock(mu_);
      first_round_ = true;
      wake_.notify_all();
    }
    std::unique_lock lock(mu_);
    // Before the ring shows another member, look again soon: a joining node waits for this.
    const auto wait = first && !asked ? std::chrono::milliseconds(50) : interval_;
    if (wake_.wait_for(lock, wait, [this] { return stopping_ || push_pending_; }) && stopping_) {
      return;
    }
  }
}

}  // namespace throttlex
