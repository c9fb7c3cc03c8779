// The client side of a Cap'n Proto two-party connection to a node's RPC port: the stream, the vat
// network, the RPC system and the bootstrapped Node capability, in the order they must be built
// and (backwards) destroyed. Shared by the client library and the daemon's forwarder.
#pragma once

#include <capnp/message.h>
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include "proto/throttlex.capnp.h"

namespace throttlex::proto {

struct NodeConnection {
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
  Node::Client node;

  NodeConnection(kj::Own<kj::AsyncIoStream> s, capnp::ReaderOptions options)
      : stream(kj::mv(s)),
        network(*stream, capnp::rpc::twoparty::Side::CLIENT, options),
        rpc(capnp::makeRpcClient(network)),
        node(bootstrap(rpc)) {}

 private:
  static Node::Client bootstrap(capnp::RpcSystem<capnp::rpc::twoparty::VatId>& rpc) {
    capnp::word scratch[4] = {};
    capnp::MallocMessageBuilder message(scratch);
    auto vat = message.getRoot<capnp::rpc::twoparty::VatId>();
    vat.setSide(capnp::rpc::twoparty::Side::SERVER);
    return rpc.bootstrap(vat).castAs<Node>();
  }
};

}  // namespace throttlex::proto
