#include "daemon/service/overload.h"

#include <algorithm>
#include <string>

namespace throttlex {
namespace {

thread_local OverloadDetector* current_detector = nullptr;

}  // namespace

std::string_view nameOf(Priority p) {
  switch (p) {
    case Priority::kNormal:
      return "normal";
    case Priority::kCritical:
      return "critical";
    case Priority::kSheddable:
      return "sheddable";
  }
  return "normal";
}

Result<Priority> parsePriority(std::string_view text) {
  for (auto p : {Priority::kNormal, Priority::kCritical, Priority::kSheddable}) {
    if (text == nameOf(p)) return p;
  }
  return invalidArgument("priority must be critical, normal or sheddable, not '" +
                         std::string(text.substr(0, 40)) + "'");
}

std::string_view nameOf(ShedReason r) {
  return r == ShedReason::kDeadline ? "deadline" : "overload";
}

Duration OverloadDetector::probePeriod() const {
  using std::chrono::milliseconds;
  return std::clamp<Duration>(options_.target / 2, milliseconds(1), milliseconds(50));
}

void OverloadDetector::sample(Instant now, Duration lag, Instant next_due) {
  lag_ = lag;
  next_due_ = next_due;
  if (lag >= peak_ || now - peak_at_ > options_.interval) {
    peak_ = lag;
    peak_at_ = now;
  }
  if (options_.target <= Duration(0) || lag <= options_.target) {
    above_since_.reset();
  } else if (!above_since_) {
    // Above the target since the sample before at the latest: since this one was due.
    above_since_ = now - lag + options_.target;
  }
  while (!floor_.empty() && floor_.back().second >= lag) floor_.pop_back();
  floor_.emplace_back(now, lag);
  while (floor_.size() > 1 && now - floor_.front().first >= options_.interval) floor_.pop_front();
  steerShare(now);
  prev_floor_ = standingLag();
}

Duration OverloadDetector::standingLag() const {
  return floor_.empty() ? Duration(0) : floor_.front().second;
}

void OverloadDetector::steerShare(Instant now) {
  // Off until a standing queue forms (a burst sheds no normal check); then until it is back at 0.
  if (options_.target <= Duration(0) || (share_ <= 0 && !standingAt(now))) return;
  const double target = static_cast<double>(options_.target.count());
  const Duration floor = standingLag();
  const double above = static_cast<double>((floor - options_.target).count()) / target;
  const double grew = static_cast<double>((floor - prev_floor_).count()) / target;
  share_ = std::clamp(share_ + kShareGain * above + kShareDamping * grew, 0.0, 1.0);
  if (share_ <= 0) credit_ = 0;
}

bool OverloadDetector::draw() {
  if (share_ <= 0) return false;
  credit_ += share_;
  if (credit_ < 1) return false;
  credit_ -= 1;
  return true;
}

Duration OverloadDetector::lagAt(Instant now) const {
  const Duration lag = currentLag(now);
  return now - peak_at_ <= options_.interval ? std::max(lag, peak_) : lag;
}

Duration OverloadDetector::currentLag(Instant now) const {
  return next_due_ ? std::max(lag_, now - *next_due_) : lag_;
}

bool OverloadDetector::standingAt(Instant now) const {
  if (options_.target <= Duration(0)) return false;
  if (above_since_ && now - *above_since_ >= options_.interval) return true;
  return next_due_ && now - (*next_due_ + options_.target) >= options_.interval;
}

bool Admission::inShare() {
  if (!drawn_) drawn_ = detector_ != nullptr && detector_->draw();
  return *drawn_;
}

std::optional<ShedReason> OverloadDetector::shed(Priority priority, Admission& entry,
                                                 std::optional<Instant> deadline) const {
  const Instant now = entry.now();
  if (deadline && now > *deadline) return ShedReason::kDeadline;
  if (options_.target <= Duration(0)) return std::nullopt;
  switch (priority) {
    case Priority::kSheddable:
      if (lagAt(now) > options_.target) return ShedReason::kOverload;
      break;
    case Priority::kNormal:
      if (entry.inShare()) return ShedReason::kOverload;
      // What waited too long now: a standing queue's current lag, not a past peak.
      if (currentLag(now) > kNormalLagFactor * options_.target && standingAt(now)) {
        return ShedReason::kOverload;
      }
      break;
    case Priority::kCritical:
      break;
  }
  return std::nullopt;
}

OverloadDetector* OverloadDetector::current() {
  return current_detector;
}

void OverloadDetector::setCurrent(OverloadDetector* detector) {
  current_detector = detector;
}

}  // namespace throttlex
