// An in-memory network for deterministic tests of many Membership instances in one thread.
//
// Packets are queued with a delivery time and delivered by deliverUntil(now), which the test calls
// from its virtual-time loop: no real time, no sleeps, no threads. Faults per directed link (loss,
// duplication, delay range) plus partitions and an arbitrary drop filter. Loss and duplication
// apply to datagrams only; streams are reliable (as TCP) but still cut by partitions and filters.
// Everything random comes from the seed, so a run is reproducible.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gossip/transport.h"
#include "limiter/clock.h"

namespace throttlex::gossip {

class SimNetwork {
 public:
  using Receiver = std::function<void(const Packet&, Time)>;
  // Return true to drop the packet (runs before loss and partitions).
  using Filter = std::function<bool(const std::string& to, const Packet&)>;

  struct LinkFaults {
    double loss = 0.0;       // probability a datagram vanishes
    double duplicate = 0.0;  // probability a datagram is delivered twice
    Duration min_delay = std::chrono::milliseconds(1);
    Duration max_delay = std::chrono::milliseconds(5);
  };

  struct Stats {
    std::uint64_t sent = 0;
    std::uint64_t delivered = 0;
    std::uint64_t lost = 0;  // loss, partitions, filter, no receiver
    std::uint64_t duplicated = 0;
  };

  SimNetwork(std::uint64_t seed, LinkFaults defaults);
  ~SimNetwork();

  // The transport whose sends come from `address`; owned by the network, valid as long as it.
  Transport& transport(const std::string& address);
  // Packets for `address` go to `receiver` from now on; detach() makes the node vanish (crash).
  void attach(const std::string& address, Receiver receiver);
  void detach(const std::string& address);

  void setDefaults(LinkFaults faults) { defaults_ = faults; }
  void setLink(const std::string& from, const std::string& to, LinkFaults faults);
  void setFilter(Filter filter) { filter_ = std::move(filter); }
  // Packets between different groups are dropped until heal(); addresses in no group are
  // unaffected.
  void partition(const std::vector<std::vector<std::string>>& groups);
  void heal() { group_of_.clear(); }

  // Delivers, in time order, every packet due at or before `now` (including ones sent meanwhile).
  void deliverUntil(Time now);
  Time now() const { return now_; }
  const Stats& stats() const { return stats_; }

 private:
  class Endpoint;
  struct InFlight {
    Time at;
    std::uint64_t order;
    std::string to;
    Packet packet;
    bool operator>(const InFlight& o) const { return at != o.at ? at > o.at : order > o.order; }
  };

  void send(const std::string& from, const std::string& to, Channel channel,
            std::vector<std::uint8_t> bytes);
  const LinkFaults& faults(const std::string& from, const std::string& to) const;
  void enqueue(const std::string& to, Packet packet, const LinkFaults& faults);

  std::mt19937_64 rng_;
  LinkFaults defaults_;
  std::map<std::pair<std::string, std::string>, LinkFaults> links_;
  std::map<std::string, std::unique_ptr<Endpoint>> endpoints_;
  std::map<std::string, Receiver> receivers_;
  std::map<std::string, int> group_of_;
  Filter filter_;
  std::priority_queue<InFlight, std::vector<InFlight>, std::greater<>> queue_;
  std::uint64_t next_order_ = 0;
  Time now_{};
  Stats stats_;
};

}  // namespace throttlex::gossip
