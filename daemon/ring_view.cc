#include "daemon/ring_view.h"

namespace throttlex {
namespace {

std::atomic<std::uint64_t> next_instance{1};

struct ViewCache {
  std::uint64_t instance = 0;
  std::uint64_t version = 0;
  std::shared_ptr<const RingView> view;
};
thread_local ViewCache tls_view;

}  // namespace

RingHolder::RingHolder() : instance_(next_instance.fetch_add(1)) {}

void RingHolder::publish(std::shared_ptr<const RingView> view) {
  std::lock_guard guard(mu_);
  view_ = std::move(view);
  version_.fetch_add(1, std::memory_order_release);
}

const std::shared_ptr<const RingView>& RingHolder::current() const {
  const std::uint64_t v = version_.load(std::memory_order_acquire);
  if (tls_view.instance != instance_ || tls_view.version != v) {
    std::lock_guard guard(mu_);
    tls_view.view = view_;
    tls_view.version = version_.load(std::memory_order_relaxed);
    tls_view.instance = instance_;
  }
  return tls_view.view;
}

std::shared_ptr<const RingView> RingHolder::snapshot() const {
  std::lock_guard guard(mu_);
  return view_;
}

}  // namespace throttlex
