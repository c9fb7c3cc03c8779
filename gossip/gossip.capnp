# ThrottleX gossip (SWIM membership) wire format.
#
# Rules for changing this file: ONLY APPEND. Field ordinals, enum values and union members are part
# of the protocol; never renumber, retype or remove. A node drops (and counts) a packet whose
# envelope version it does not understand, whose cluster name differs, or that does not decode.
#
# Layering: an Envelope (packed) carries the cluster name, the version and room for authentication
# (keyId + auth: a MAC or AEAD tag over `body`, empty until cluster keys exist), and the Body as
# opaque bytes (itself a packed message), so adding authentication or encryption changes no layout.
@0xd3c1a7f5e2b94c61;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("throttlex::gossip::wire");

const protocolVersion :UInt16 = 1;

struct Envelope {
  version @0 :UInt16;
  cluster @1 :Text;
  keyId @2 :UInt32;   # 0 = unauthenticated (the only mode built so far)
  auth @3 :Data;      # empty until authentication exists
  body @4 :Data;      # a packed Body
}

enum MemberState {
  alive @0;
  suspect @1;
  dead @2;
  left @3;
}

struct NodeMeta {
  rpcAddress @0 :Text;
  httpAddress @1 :Text;
  protocolVersion @2 :UInt16;
}

# One fact about one member: the unit of dissemination and of push/pull state.
struct MemberUpdate {
  state @0 :MemberState;
  id @1 :Text;
  address @2 :Text;
  incarnation @3 :UInt64;
  meta @4 :NodeMeta;
  from @5 :Text;      # who raised a suspicion / declared death (Lifeguard confirmations)
}

struct Ping {
  seq @0 :UInt32;
  targetId @1 :Text;  # the receiver drops a ping meant for another node (address reuse)
}

struct PingReq {
  seq @0 :UInt32;
  targetId @1 :Text;
  targetAddress @2 :Text;
}

struct Ack {
  seq @0 :UInt32;
}

struct PushPull {
  join @0 :Bool;
  reply @1 :Bool;
  members @2 :List(MemberUpdate);
}

struct Body {
  senderId @0 :Text;
  senderAddress @1 :Text;
  union {
    gossip @2 :Void;      # piggy-backed updates only
    ping @3 :Ping;
    pingReq @4 :PingReq;
    ack @5 :Ack;
    pushPull @6 :PushPull;
  }
  updates @7 :List(MemberUpdate);
}
