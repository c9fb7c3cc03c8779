// Fuzz target: the entries of a handoff (daemon/slots/slot_keeper.h, SlotKeeper::receive), as a
// peer sends them: 32-byte records of key hash and state. Malformed and implausible records are
// skipped and counted; what is merged must leave the store consistent.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "daemon/slots/slot_keeper.h"
#include "limiter/clock.h"
#include "limiter/store.h"

using namespace throttlex;

namespace {

struct Receiver {
  ManualClock clock;
  std::unique_ptr<Store> store = Store::make({4096, 4}).value();
  SlotKeeper keeper{SlotKeeperOptions{}, *store, clock};
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Receiver* r = new Receiver();
  (void)r->keeper.receive("fuzz", {}, std::span<const std::uint8_t>(data, size));
  (void)r->store->stats();
  return 0;
}
