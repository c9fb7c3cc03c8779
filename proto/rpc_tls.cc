#include "proto/rpc_tls.h"

#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

namespace throttlex::proto {
namespace {

Result<std::string> readFile(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return Error{ErrorCode::kInvalidArgument, std::string(what) + ": cannot read " + path};
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"  // KJ's interface; destroyed through kj::Own
class CoalescingStream final : public kj::AsyncIoStream {
 public:
  explicit CoalescingStream(kj::Own<kj::AsyncIoStream> inner) : inner_(kj::mv(inner)) {}

  kj::Promise<size_t> tryRead(void* buffer, size_t min_bytes, size_t max_bytes) override {
    return inner_->tryRead(buffer, min_bytes, max_bytes);
  }
  kj::Promise<void> write(const void* buffer, size_t size) override {
    return inner_->write(buffer, size);
  }
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    if (pieces.size() == 1) return inner_->write(pieces[0].begin(), pieces[0].size());
    size_t total = 0;
    for (auto& piece : pieces) total += piece.size();
    auto joined = kj::heapArray<kj::byte>(total);
    size_t at = 0;
    for (auto& piece : pieces) {
      if (piece.size() == 0) continue;
      memcpy(joined.begin() + at, piece.begin(), piece.size());
      at += piece.size();
    }
    auto written = inner_->write(joined.begin(), joined.size());
    return written.attach(kj::mv(joined));
  }
  kj::Promise<void> whenWriteDisconnected() override { return inner_->whenWriteDisconnected(); }
  void shutdownWrite() override { inner_->shutdownWrite(); }
  void abortRead() override { inner_->abortRead(); }

 private:
  kj::Own<kj::AsyncIoStream> inner_;
};

// Reads `first` before anything of `inner`.
class PutBackStream final : public kj::AsyncIoStream {
 public:
  PutBackStream(kj::Own<kj::AsyncIoStream> inner, kj::byte first)
      : inner_(kj::mv(inner)), first_(first) {}

  kj::Promise<size_t> tryRead(void* buffer, size_t min_bytes, size_t max_bytes) override {
    if (!pending_ || max_bytes == 0) return inner_->tryRead(buffer, min_bytes, max_bytes);
    pending_ = false;
    auto* out = static_cast<kj::byte*>(buffer);
    out[0] = first_;
    if (min_bytes <= 1) return size_t{1};
    return inner_->tryRead(out + 1, min_bytes - 1, max_bytes - 1).then([](size_t n) {
      return n + 1;
    });
  }
  kj::Promise<void> write(const void* buffer, size_t size) override {
    return inner_->write(buffer, size);
  }
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    return inner_->write(pieces);
  }
  kj::Promise<void> whenWriteDisconnected() override { return inner_->whenWriteDisconnected(); }
  void shutdownWrite() override { inner_->shutdownWrite(); }
  void abortRead() override { inner_->abortRead(); }
  kj::Maybe<int> getFd() const override { return inner_->getFd(); }

 private:
  kj::Own<kj::AsyncIoStream> inner_;
  kj::byte first_;
  bool pending_ = true;
};

#pragma GCC diagnostic pop

}  // namespace

kj::Own<kj::AsyncIoStream> coalesceWrites(kj::Own<kj::AsyncIoStream> tls_stream) {
  return kj::heap<CoalescingStream>(kj::mv(tls_stream));
}

kj::Own<kj::AsyncIoStream> putBack(kj::Own<kj::AsyncIoStream> stream, kj::byte first) {
  return kj::heap<PutBackStream>(kj::mv(stream), first);
}

const char* nameOf(Role role) {
  switch (role) {
    case Role::kClient:
      return "client";
    case Role::kPeer:
      return "peer";
    case Role::kAdmin:
      return "admin";
  }
  return "?";
}

Result<Role> roleOf(std::string_view common_name) {
  for (Role role : {Role::kClient, Role::kPeer, Role::kAdmin}) {
    const std::string prefix = std::string(nameOf(role)) + ":";
    if (common_name.size() > prefix.size() && common_name.substr(0, prefix.size()) == prefix) {
      return role;
    }
  }
  return invalidArgument("certificate common name '" + std::string(common_name) +
                         "' grants no role (want client:NAME, peer:NAME or admin:NAME)");
}

struct TlsConfig::Material {
  std::vector<kj::TlsCertificate> trusted;
  kj::Own<kj::TlsKeypair> keypair;
};

TlsConfig::~TlsConfig() = default;

Result<TlsPem> readPem(const TlsFiles& files) {
  if (files.ca.empty() || files.cert.empty() || files.key.empty()) {
    return invalidArgument(
        "TLS needs all three of the CA certificate, the certificate and its key");
  }
  auto ca = readFile(files.ca, "CA certificate");
  if (!ca) return ca.error();
  auto cert = readFile(files.cert, "certificate");
  if (!cert) return cert.error();
  auto key = readFile(files.key, "private key");
  if (!key) return key.error();
  return TlsPem{std::move(*ca), std::move(*cert), std::move(*key)};
}

Result<std::shared_ptr<const TlsConfig::Material>> TlsConfig::read(const TlsFiles& files) {
  auto pem = readPem(files);
  if (!pem) return pem.error();
  const std::string* ca = &pem->ca;
  const std::string* cert = &pem->cert;
  const std::string* key = &pem->key;
  auto m = std::make_shared<Material>();
  std::string problem;
  auto failed = kj::runCatchingExceptions([&] {
    problem = "CA certificate " + files.ca;
    m->trusted.emplace_back(kj::StringPtr(ca->c_str(), ca->size()));
    problem = "certificate " + files.cert + " or key " + files.key;
    m->keypair = kj::heap<kj::TlsKeypair>(
        kj::TlsKeypair{kj::TlsPrivateKey(kj::StringPtr(key->c_str(), key->size())),
                       kj::TlsCertificate(kj::StringPtr(cert->c_str(), cert->size()))});
  });
  KJ_IF_MAYBE (e, failed) {
    return invalidArgument(problem + " does not parse: " + std::string(e->getDescription().cStr()));
  }
  return std::shared_ptr<const Material>(std::move(m));
}

Result<std::shared_ptr<TlsConfig>> TlsConfig::load(const TlsFiles& files) {
  auto m = read(files);
  if (!m) return m.error();
  return std::shared_ptr<TlsConfig>(new TlsConfig(files, std::move(*m)));
}

Status TlsConfig::reload() {
  auto m = read(files_);
  if (!m) return m.error();
  {
    MutexLock guard(mu_);
    material_ = std::move(*m);
  }
  generation_.fetch_add(1, std::memory_order_acq_rel);
  return Ok{};
}

std::shared_ptr<const TlsConfig::Material> TlsConfig::material() const {
  MutexLock guard(mu_);
  return material_;
}

kj::Own<kj::TlsContext> TlsConfig::serverContext(kj::Timer& timer) const {
  auto m = material();
  kj::TlsContext::Options options;
  options.useSystemTrustStore = false;
  options.verifyClients = true;
  options.trustedCertificates = kj::arrayPtr(m->trusted.data(), m->trusted.size());
  options.defaultKeypair = *m->keypair;
  options.timer = timer;
  options.acceptTimeout = 5 * kj::SECONDS;
  return kj::heap<kj::TlsContext>(kj::mv(options)).attach(kj::mv(m));
}

kj::Own<kj::TlsContext> TlsConfig::clientContext() const {
  auto m = material();
  kj::TlsContext::Options options;
  options.useSystemTrustStore = false;
  options.trustedCertificates = kj::arrayPtr(m->trusted.data(), m->trusted.size());
  options.defaultKeypair = *m->keypair;
  return kj::heap<kj::TlsContext>(kj::mv(options)).attach(kj::mv(m));
}

TlsContextCache::TlsContextCache(std::shared_ptr<const TlsConfig> config, bool server,
                                 kj::Timer* timer)
    : config_(std::move(config)), server_(server), timer_(timer) {}

kj::TlsContext* TlsContextCache::get() {
  if (config_ == nullptr) return nullptr;
  const std::uint64_t now = config_->generation();
  if (contexts_.empty() || now != generation_) {
    contexts_.add(server_ ? config_->serverContext(*timer_) : config_->clientContext());
    generation_ = now;
  }
  return contexts_.back().get();
}

BlockingPeerLoop::BlockingPeerLoop() : io_(kj::setupAsyncIo()) {}

BlockingPeerLoop& BlockingPeerLoop::ofThisThread() {
  thread_local std::unique_ptr<BlockingPeerLoop> loop;
  if (!loop) loop.reset(new BlockingPeerLoop());
  return *loop;
}

kj::TlsContext* BlockingPeerLoop::tls(const std::shared_ptr<const TlsConfig>& config,
                                      bool* switched) {
  const bool change = !cache_ || config != config_;
  if (change) {
    config_ = config;
    cache_ = std::make_unique<TlsContextCache>(config, false);
  }
  if (switched != nullptr) *switched = change;
  return cache_->get();
}

kj::Promise<kj::Own<kj::AsyncIoStream>> connectNode(kj::Network& network, kj::StringPtr address,
                                                    kj::TlsContext* tls) {
  return network.parseAddress(address).then(
      [tls](kj::Own<kj::NetworkAddress> a) -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
        return secureClient(a->connect().attach(kj::mv(a)), tls);
      });
}

kj::Promise<kj::Own<kj::AsyncIoStream>> secureClient(
    kj::Promise<kj::Own<kj::AsyncIoStream>> connected, kj::TlsContext* tls) {
  if (tls == nullptr) return connected;
  return connected
      .then([tls](kj::Own<kj::AsyncIoStream> stream) {
        return tls->wrapClient(kj::mv(stream), kNodeServerName);
      })
      .then([](kj::Own<kj::AsyncIoStream> secured) { return coalesceWrites(kj::mv(secured)); });
}

}  // namespace throttlex::proto
