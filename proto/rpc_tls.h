// TLS for the RPC port (docs/security.md): certificates loaded once, one kj::TlsContext per event
// loop, and the role a peer's certificate grants.
//
// Every party presents a certificate signed by the cluster's CA; the server requires one. The
// certificate's common name says the role: "admin:<name>", "peer:<name>" (nodes) or
// "client:<name>". Nodes' certificates also carry the DNS name kNodeServerName, which is what a
// client verifies (nodes are reached by IP address; the CA is the cluster's own, so "signed by our
// CA and a node" is the identity that matters).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include <kj/async-io.h>
#include <kj/compat/tls.h>
#include <kj/timer.h>
#include <kj/vector.h>

#include "limiter/mutex.h"
#include "limiter/result.h"

namespace throttlex::proto {

// What a connection may do. Each role may do what the ones before it may.
enum class Role : std::uint8_t {
  kClient,  // checks (decided as entering at this node: hops forced to 0), read-only Admin calls
  kPeer,    // also forwarded checks (hops > 0) and handoffs: other nodes
  kAdmin,   // also every Admin call that changes something (rules, reset, drain, keyring, ...)
};
const char* nameOf(Role role);
// The role a certificate's common name grants ("peer:node-1" → kPeer); an error for any other.
Result<Role> roleOf(std::string_view common_name);

inline constexpr const char* kNodeServerName = "throttlex-node";

struct TlsFiles {
  std::string ca;    // PEM: the cluster's CA certificate
  std::string cert;  // PEM: this party's certificate (chain)
  std::string key;   // PEM: its private key
  bool enabled() const { return !ca.empty() || !cert.empty() || !key.empty(); }
};

// The PEM text of the three files (all are required); errors name the file.
struct TlsPem {
  std::string ca, cert, key;
};
Result<TlsPem> readPem(const TlsFiles& files);

// The certificates of one party. Thread-safe. reload() reads the files again (a renewed
// certificate, a new CA bundle) without a restart: contexts made afterwards use the new material,
// and users that keep a context check generation() before each new connection (connections
// already open keep theirs).
class TlsConfig {
 public:
  // Reads the three files (all are required); errors name the file.
  static Result<std::shared_ptr<TlsConfig>> load(const TlsFiles& files);

  // Reads the files again; on any error the material in use stays and the error says why.
  Status reload();
  // Rises with every successful reload.
  std::uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

  // A server context: client certificates required; a handshake must finish within 5 s.
  kj::Own<kj::TlsContext> serverContext(kj::Timer& timer) const;
  // A client context that presents this party's certificate.
  kj::Own<kj::TlsContext> clientContext() const;

  ~TlsConfig();

 private:
  struct Material;
  TlsConfig(TlsFiles files, std::shared_ptr<const Material> material)
      : files_(std::move(files)), material_(std::move(material)) {}
  static Result<std::shared_ptr<const Material>> read(const TlsFiles& files);
  std::shared_ptr<const Material> material() const;

  const TlsFiles files_;
  mutable Mutex mu_;
  std::shared_ptr<const Material> material_ GUARDED_BY(mu_);
  std::atomic<std::uint64_t> generation_{0};
};

// A context of `config` kept on one event loop and made again after a reload. Contexts it
// replaces stay alive (connections made with them may still be open).
class TlsContextCache {
 public:
  // `server`: server contexts (on `timer`), else client contexts. `config` may be null (no TLS).
  TlsContextCache(std::shared_ptr<const TlsConfig> config, bool server, kj::Timer* timer = nullptr);
  // The current context; null without TLS.
  kj::TlsContext* get();

 private:
  std::shared_ptr<const TlsConfig> config_;
  bool server_;
  kj::Timer* timer_;
  std::uint64_t generation_ = 0;
  kj::Vector<kj::Own<kj::TlsContext>> contexts_;  // the last is current
};

// The KJ event loop of a thread that makes blocking calls to peers (the slot keeper's handoffs,
// the adaptive exchange): one per thread, made on its first use, with client TLS contexts of the
// node's certificate (null: plain TCP) made again after a reload.
class BlockingPeerLoop {
 public:
  static BlockingPeerLoop& ofThisThread();

  kj::AsyncIoContext& io() { return io_; }
  // The context for a new connection; null without TLS. A caller that switches to another config
  // (tests do) gets a fresh cache: connections it keeps must be dropped then (`switched`).
  kj::TlsContext* tls(const std::shared_ptr<const TlsConfig>& config, bool* switched = nullptr);
  // Refreshes the timer's "now" after an idle spell: a stale "now" would make a deadline set
  // before the next poll expire at once.
  void wake() { io_.waitScope.poll(); }

 private:
  BlockingPeerLoop();
  kj::AsyncIoContext io_;
  std::shared_ptr<const TlsConfig> config_;
  std::unique_ptr<TlsContextCache> cache_;
};

// A TLS stream that hands every multi-piece write to TLS as one piece. KJ's TLS writes each
// piece on its own (its own TLS record and socket write), and a Cap'n Proto message is written
// as several (segment table, segments): one copy into one buffer is cheaper than the records.
kj::Own<kj::AsyncIoStream> coalesceWrites(kj::Own<kj::AsyncIoStream> tls_stream);

// `stream` with `first` (a byte already read from it, to tell TLS from plain) put back in front.
kj::Own<kj::AsyncIoStream> putBack(kj::Own<kj::AsyncIoStream> stream, kj::byte first);
// The first byte of every TLS connection (a handshake record). A Cap'n Proto stream starts with
// its first message's segment count minus one, a little-endian word: 0x16 would take 23
// segments, which no message of ours has.
inline constexpr kj::byte kTlsHandshakeByte = 0x16;

// `connected` over TLS when `tls` is not null (the node's certificate is verified against the CA
// and kNodeServerName), with writes coalesced; as it is otherwise.
kj::Promise<kj::Own<kj::AsyncIoStream>> secureClient(
    kj::Promise<kj::Own<kj::AsyncIoStream>> connected, kj::TlsContext* tls);

// Connects to `address` ("host:port"); over TLS when `tls` is not null (the node's certificate
// is verified against the CA and kNodeServerName).
kj::Promise<kj::Own<kj::AsyncIoStream>> connectNode(kj::Network& network, kj::StringPtr address,
                                                    kj::TlsContext* tls);

}  // namespace throttlex::proto
