#include "gossip/sim_network.h"

namespace throttlex::gossip {

class SimNetwork::Endpoint final : public Transport {
 public:
  Endpoint(SimNetwork& net, std::string address) : net_(net), address_(std::move(address)) {}
  void send(const std::string& to, Channel channel, std::vector<std::uint8_t> bytes) override {
    net_.send(address_, to, channel, std::move(bytes));
  }

 private:
  SimNetwork& net_;
  std::string address_;
};

SimNetwork::SimNetwork(std::uint64_t seed, LinkFaults defaults) : rng_(seed), defaults_(defaults) {}

SimNetwork::~SimNetwork() = default;

Transport& SimNetwork::transport(const std::string& address) {
  auto& endpoint = endpoints_[address];
  if (!endpoint) endpoint = std::make_unique<Endpoint>(*this, address);
  return *endpoint;
}

void SimNetwork::attach(const std::string& address, Receiver receiver) {
  receivers_[address] = std::move(receiver);
}

void SimNetwork::detach(const std::string& address) {
  receivers_.erase(address);
}

void SimNetwork::setLink(const std::string& from, const std::string& to, LinkFaults faults) {
  links_[{from, to}] = faults;
}

void SimNetwork::partition(const std::vector<std::vector<std::string>>& groups) {
  group_of_.clear();
  for (std::size_t g = 0; g < groups.size(); ++g) {
    for (const auto& address : groups[g]) group_of_[address] = static_cast<int>(g);
  }
}

const SimNetwork::LinkFaults& SimNetwork::faults(const std::string& from,
                                                 const std::string& to) const {
  auto it = links_.find({from, to});
  return it == links_.end() ? defaults_ : it->second;
}

void SimNetwork::send(const std::string& from, const std::string& to, Channel channel,
                      std::vector<std::uint8_t> bytes) {
  ++stats_.sent;
  Packet packet{from, channel, std::move(bytes)};
  if (filter_ && filter_(to, packet)) {
    ++stats_.lost;
    return;
  }
  auto gf = group_of_.find(from);
  auto gt = group_of_.find(to);
  if (gf != group_of_.end() && gt != group_of_.end() && gf->second != gt->second) {
    ++stats_.lost;
    return;
  }
  const LinkFaults& f = faults(from, to);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  if (channel == Channel::kDatagram) {
    if (coin(rng_) < f.loss) {
      ++stats_.lost;
      return;
    }
    if (coin(rng_) < f.duplicate) {
      ++stats_.duplicated;
      enqueue(to, packet, f);
    }
  }
  enqueue(to, std::move(packet), f);
}

void SimNetwork::enqueue(const std::string& to, Packet packet, const LinkFaults& f) {
  std::uniform_int_distribution<Duration::rep> delay(f.min_delay.count(),
                                                     std::max(f.min_delay, f.max_delay).count());
  queue_.push(InFlight{now_ + Duration(delay(rng_)), next_order_++, to, std::move(packet)});
}

void SimNetwork::deliverUntil(Time now) {
  while (!queue_.empty() && queue_.top().at <= now) {
    InFlight item = queue_.top();
    queue_.pop();
    now_ = item.at;
    auto it = receivers_.find(item.to);
    if (it == receivers_.end()) {
      ++stats_.lost;
      continue;
    }
    ++stats_.delivered;
    it->second(item.packet, item.at);
  }
  now_ = now;
}

}  // namespace throttlex::gossip
