// A running node: builds every component from a Config, runs them, and stops them in order.
//
// main() reads the configuration, constructs the clock, starts a Node and turns signals into
// calls on it; everything else about a node's life is here. Start-up order: the store and Redis
// (snapshots), the slot keeper, the limiter service, the forwarder and router, metrics, RPC, HTTP,
// then membership (it announces the bound addresses), the sweeper, and readiness once start-up
// recovery is done. Stopping reverses it (stop()).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>

#include "daemon/node/config.h"
#include "limiter/clock.h"
#include "limiter/result.h"

namespace throttlex {

class Node {
 public:
  // Starts the node and blocks until it is ready (start-up recovery included). `clock` must
  // outlive the node. `request_stop` is called (on an RPC thread) when an operator asks the node
  // to drain; it must lead to stop() on another thread. An error names the flag at fault.
  static Result<std::unique_ptr<Node>> start(const Config& config, const Clock& clock,
                                             std::function<void()> request_stop);
  ~Node();  // stop()s
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Reloads the rules file (SIGHUP); the old rules stay on failure. Returns the rule count.
  Result<std::size_t> reloadRules();
  // Reads the --tls-* files again: new connections use them, open ones keep theirs. False when
  // the node runs without TLS; an error (the old certificates stay) names the file.
  Result<bool> reloadTls();

  // The graceful end (SIGTERM, SIGINT, throttlectl drain): readiness off, slots handed to the
  // nodes that take them over, leave announced, stays while checks still arrive, then every
  // component stopped in order and the last snapshot written. Idempotent.
  void stop();

  struct Parts;  // the components, in construction order (node.cc)

 private:
  explicit Node(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> parts_;
  bool stopped_ = false;
};

}  // namespace throttlex
