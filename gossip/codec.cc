#include "gossip/codec.h"

#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <kj/exception.h>
#include <kj/io.h>

#include "gossip/gossip.capnp.h"

namespace throttlex::gossip {
namespace {

// Reader bounds: far above what a legitimate packet needs (a 4 MiB stream message is 512 Ki
// words), low enough that a hostile one cannot make us walk much memory.
constexpr std::uint64_t kTraversalLimitWords = 1u << 20;
constexpr int kNestingLimit = 8;

capnp::ReaderOptions readerOptions() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = kTraversalLimitWords;
  options.nestingLimit = kNestingLimit;
  return options;
}

kj::StringPtr text(const std::string& s) {
  return kj::StringPtr(s.c_str(), s.size());
}
// A text field within `max` bytes, copied into `out`; false (malformed) when longer.
bool bounded(capnp::Text::Reader t, std::size_t max, std::string& out) {
  if (t.size() > max) return false;
  out.assign(t.cStr(), t.size());
  return true;
}

void fill(wire::MemberUpdate::Builder b, const Update& u) {
  b.setState(static_cast<wire::MemberState>(u.state));
  b.setId(text(u.id));
  b.setAddress(text(u.address));
  b.setIncarnation(u.incarnation);
  auto meta = b.initMeta();
  meta.setRpcAddress(text(u.meta.rpc_address));
  meta.setHttpAddress(text(u.meta.http_address));
  meta.setProtocolVersion(u.meta.protocol_version);
  if (!u.from.empty()) b.setFrom(text(u.from));
}

void fillList(capnp::List<wire::MemberUpdate>::Builder list, const std::vector<Update>& updates) {
  for (unsigned i = 0; i < updates.size(); ++i) fill(list[i], updates[i]);
}

bool read(wire::MemberUpdate::Reader r, Update& u) {
  auto state = static_cast<std::uint16_t>(r.getState());
  if (state > static_cast<std::uint16_t>(MemberState::kLeft)) return false;
  u.state = static_cast<MemberState>(state);
  auto meta = r.getMeta();
  if (!bounded(r.getId(), kMaxIdBytes, u.id) || u.id.empty() ||
      !bounded(r.getAddress(), kMaxAddressBytes, u.address) ||
      !bounded(meta.getRpcAddress(), kMaxAddressBytes, u.meta.rpc_address) ||
      !bounded(meta.getHttpAddress(), kMaxAddressBytes, u.meta.http_address) ||
      !bounded(r.getFrom(), kMaxIdBytes, u.from)) {
    return false;
  }
  u.incarnation = r.getIncarnation();
  u.meta.protocol_version = meta.getProtocolVersion();
  return true;
}

bool readList(capnp::List<wire::MemberUpdate>::Reader list, std::vector<Update>& out) {
  if (list.size() > kMaxListEntries) return false;  // before any allocation
  out.resize(list.size());
  for (unsigned i = 0; i < list.size(); ++i) {
    if (!read(list[i], out[i])) return false;
  }
  return true;
}

std::vector<std::uint8_t> packed(capnp::MessageBuilder& builder) {
  kj::VectorOutputStream stream;
  capnp::writePackedMessage(stream, builder);
  auto bytes = stream.getArray();
  return std::vector<std::uint8_t>(bytes.begin(), bytes.end());
}

void encodeBody(wire::Body::Builder b, const Message& m) {
  b.setSenderId(text(m.sender_id));
  b.setSenderAddress(text(m.sender_address));
  switch (m.type) {
    case MessageType::kGossip:
      b.setGossip();
      break;
    case MessageType::kPing: {
      auto p = b.initPing();
      p.setSeq(m.seq);
      p.setTargetId(text(m.target_id));
      break;
    }
    case MessageType::kPingReq: {
      auto p = b.initPingReq();
      p.setSeq(m.seq);
      p.setTargetId(text(m.target_id));
      p.setTargetAddress(text(m.target_address));
      break;
    }
    case MessageType::kAck:
      b.initAck().setSeq(m.seq);
      break;
    case MessageType::kPushPull: {
      auto p = b.initPushPull();
      p.setJoin(m.join);
      p.setReply(m.reply);
      fillList(p.initMembers(static_cast<unsigned>(m.members.size())), m.members);
      break;
    }
  }
  fillList(b.initUpdates(static_cast<unsigned>(m.updates.size())), m.updates);
}

DecodeStatus decodeBody(wire::Body::Reader b, Message& m) {
  if (!bounded(b.getSenderId(), kMaxIdBytes, m.sender_id) || m.sender_id.empty() ||
      !bounded(b.getSenderAddress(), kMaxAddressBytes, m.sender_address)) {
    return DecodeStatus::kMalformed;
  }
  switch (b.which()) {
    case wire::Body::GOSSIP:
      m.type = MessageType::kGossip;
      break;
    case wire::Body::PING:
      m.type = MessageType::kPing;
      m.seq = b.getPing().getSeq();
      if (!bounded(b.getPing().getTargetId(), kMaxIdBytes, m.target_id)) {
        return DecodeStatus::kMalformed;
      }
      break;
    case wire::Body::PING_REQ:
      m.type = MessageType::kPingReq;
      m.seq = b.getPingReq().getSeq();
      if (!bounded(b.getPingReq().getTargetId(), kMaxIdBytes, m.target_id) ||
          !bounded(b.getPingReq().getTargetAddress(), kMaxAddressBytes, m.target_address) ||
          m.target_address.empty()) {
        return DecodeStatus::kMalformed;
      }
      break;
    case wire::Body::ACK:
      m.type = MessageType::kAck;
      m.seq = b.getAck().getSeq();
      break;
    case wire::Body::PUSH_PULL: {
      m.type = MessageType::kPushPull;
      auto p = b.getPushPull();
      m.join = p.getJoin();
      m.reply = p.getReply();
      if (!readList(p.getMembers(), m.members)) return DecodeStatus::kMalformed;
      break;
    }
    default:
      return DecodeStatus::kUnknownType;
  }
  if (!readList(b.getUpdates(), m.updates)) return DecodeStatus::kMalformed;
  return DecodeStatus::kOk;
}

// What a sealed envelope authenticates besides its body: version and cluster name (the keyring
// adds the key id).
std::vector<std::uint8_t> associatedData(std::uint16_t version, std::string_view cluster) {
  std::vector<std::uint8_t> aad;
  aad.reserve(2 + cluster.size());
  aad.push_back(static_cast<std::uint8_t>(version >> 8));
  aad.push_back(static_cast<std::uint8_t>(version));
  aad.insert(aad.end(), cluster.begin(), cluster.end());
  return aad;
}

DecodeStatus decodeBodyBytes(kj::ArrayPtr<const kj::byte> body_bytes, Message& out) {
  kj::ArrayInputStream body_in(body_bytes);
  capnp::PackedMessageReader body_reader(body_in, readerOptions());
  return decodeBody(body_reader.getRoot<wire::Body>(), out);
}

DecodeStatus decodeUnchecked(std::span<const std::uint8_t> bytes, std::string_view cluster,
                             const Security& security, Message& out) {
  kj::ArrayInputStream in(kj::arrayPtr(bytes.data(), bytes.size()));
  capnp::PackedMessageReader envelope_reader(in, readerOptions());
  auto envelope = envelope_reader.getRoot<wire::Envelope>();
  if (envelope.getVersion() != wire::PROTOCOL_VERSION) return DecodeStatus::kVersion;
  auto name = envelope.getCluster();
  if (std::string_view(name.cStr(), name.size()) != cluster) return DecodeStatus::kForeignCluster;
  std::uint32_t key_id = envelope.getKeyId();
  auto body = envelope.getBody();
  if (key_id == 0) {
    if (envelope.getAuth().size() != 0) return DecodeStatus::kMalformed;
    if (security.keyed() && security.verify_incoming) return DecodeStatus::kUnauthenticated;
    return decodeBodyBytes(body, out);
  }
  if (!security.keyed()) return DecodeStatus::kUnauthenticated;
  auto auth = envelope.getAuth();
  auto plain = security.keyring->open(key_id, std::span(auth.begin(), auth.size()),
                                      std::span(body.begin(), body.size()),
                                      associatedData(envelope.getVersion(), cluster));
  if (!plain) return DecodeStatus::kAuthFailed;
  return decodeBodyBytes(kj::arrayPtr(plain->data(), plain->size()), out);
}

}  // namespace

const char* nameOf(DecodeStatus status) {
  switch (status) {
    case DecodeStatus::kOk:
      return "ok";
    case DecodeStatus::kTooLarge:
      return "too large";
    case DecodeStatus::kMalformed:
      return "malformed";
    case DecodeStatus::kVersion:
      return "unsupported version";
    case DecodeStatus::kForeignCluster:
      return "foreign cluster";
    case DecodeStatus::kUnknownType:
      return "unknown message type";
    case DecodeStatus::kUnauthenticated:
      return "unauthenticated";
    case DecodeStatus::kAuthFailed:
      return "authentication failed";
  }
  return "?";
}

std::vector<std::uint8_t> encode(const Message& message, std::string_view cluster,
                                 const Security& security) {
  capnp::MallocMessageBuilder body_builder;
  encodeBody(body_builder.initRoot<wire::Body>(), message);
  auto body = packed(body_builder);

  capnp::MallocMessageBuilder envelope_builder;
  auto envelope = envelope_builder.initRoot<wire::Envelope>();
  envelope.setVersion(wire::PROTOCOL_VERSION);
  envelope.setCluster(kj::StringPtr(std::string(cluster).c_str()));
  std::optional<Sealed> sealed;
  if (security.keyed() && security.verify_outgoing) {
    sealed = security.keyring->seal(body, associatedData(wire::PROTOCOL_VERSION, cluster));
    // Never fall back to plain text when sealing was asked for: send nothing instead.
    if (!sealed) return {};
  }
  if (sealed) {
    envelope.setKeyId(sealed->key_id);
    envelope.setAuth(kj::arrayPtr(sealed->auth.data(), sealed->auth.size()));
    envelope.setBody(kj::arrayPtr(sealed->ciphertext.data(), sealed->ciphertext.size()));
  } else {
    envelope.setBody(kj::arrayPtr(body.data(), body.size()));
  }
  return packed(envelope_builder);
}

DecodeStatus decode(std::span<const std::uint8_t> bytes, std::string_view cluster,
                    std::size_t max_bytes, Message& out, const Security& security) {
  if (bytes.size() > max_bytes) return DecodeStatus::kTooLarge;
  if (bytes.empty()) return DecodeStatus::kMalformed;
  // Cap'n Proto reports malformed input by throwing kj::Exception; this is the one place where
  // that is caught and turned into a status (the network is not trusted, see STYLE.md §6).
  DecodeStatus status = DecodeStatus::kMalformed;
  KJ_IF_MAYBE (exception, kj::runCatchingExceptions(
                              [&]() { status = decodeUnchecked(bytes, cluster, security, out); })) {
    (void)exception;
    return DecodeStatus::kMalformed;
  }
  return status;
}

}  // namespace throttlex::gossip
