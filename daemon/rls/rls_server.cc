#include "daemon/rls/rls_server.h"

#include <grpc/support/time.h>
#include <grpcpp/grpcpp.h>

#include "daemon/metrics/metrics.h"
#include "daemon/rls/rls_plan.h"
#include "envoy/service/ratelimit/v3/rls.grpc.pb.h"

namespace throttlex {
namespace {

namespace rls = envoy::service::ratelimit::v3;

grpc::Status toGrpc(const Error& e) {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (e.code) {
    case ErrorCode::kInvalidArgument:
      code = grpc::StatusCode::INVALID_ARGUMENT;
      break;
    case ErrorCode::kNotFound:
      code = grpc::StatusCode::NOT_FOUND;
      break;
    case ErrorCode::kPermissionDenied:
      code = grpc::StatusCode::PERMISSION_DENIED;
      break;
    case ErrorCode::kUnavailable:
    case ErrorCode::kResourceExhausted:
      code = grpc::StatusCode::UNAVAILABLE;
      break;
    case ErrorCode::kDeadlineExceeded:
      code = grpc::StatusCode::DEADLINE_EXCEEDED;
      break;
    default:
      break;
  }
  return {code, e.message};
}

bool parse(const grpc::ByteBuffer& in, rls::RateLimitRequest& out) {
  std::vector<grpc::Slice> slices;
  if (!in.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out.ParseFromString(bytes);
}

void serialize(const rls::RateLimitResponse& response, grpc::ByteBuffer& out) {
  const std::string bytes = response.SerializeAsString();
  grpc::Slice slice(bytes);
  out = grpc::ByteBuffer(&slice, 1);
}

// The raw (bytes) method: a malformed message is answered INVALID_ARGUMENT by us, where gRPC's own
// decoding would answer UNIMPLEMENTED without a word.
using RawService =
    rls::RateLimitService::WithRawCallbackMethod_ShouldRateLimit<rls::RateLimitService::Service>;

class Service final : public RawService {
 public:
  Service(Router& router, Metrics* metrics, bool headers)
      : router_(router), metrics_(metrics), headers_(headers) {}

  grpc::ServerUnaryReactor* ShouldRateLimit(grpc::CallbackServerContext* context,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    const Instant start = clock().monotonic();
    if (tls_) {
      if (const std::string why = refusedPeer(*context); !why.empty()) {
        reactor->Finish({grpc::StatusCode::PERMISSION_DENIED, why});
        return reactor;
      }
    }
    rls::RateLimitRequest parsed;
    if (!parse(*request, parsed)) {
      reactor->Finish({grpc::StatusCode::INVALID_ARGUMENT, "malformed RateLimitRequest"});
      return reactor;
    }
    auto planned = planRls(parsed, router_.service().currentRules());
    if (!planned) {
      reactor->Finish(toGrpc(planned.error()));
      return reactor;
    }
    auto plan = std::make_shared<RlsPlan>(std::move(*planned));
    auto finish = [this, plan, reactor, response, start](std::vector<Result<CheckOutcome>>& out) {
      rls::RateLimitResponse answered;
      const grpc::Status status = answer(*plan, out, answered, start);
      if (status.ok()) serialize(answered, *response);
      reactor->Finish(status);
    };
    if (!plan->atomic || plan->args.size() < 2) {
      router_.decideAll(plan->args, std::move(finish));
      return reactor;
    }
    // All or nothing: the given-back descriptors answer OK with what they have left; the request
    // is OVER_LIMIT by the one that denied it.
    router_.checkAtomic(plan->args, plan, [finish = std::move(finish)](AtomicOutcome& r) {
      for (std::size_t i = 0; i < r.outcomes.size(); ++i) {
        if (!r.refunded[i]) continue;
        r.outcomes[i]->allowed = true;
        r.outcomes[i]->decision.allowed = true;  // its remaining is after the refund
      }
      finish(r.outcomes);
    });
    return reactor;
  }

  void requireRoles() { tls_ = true; }

 private:
  const Clock& clock() const { return router_.service().clock(); }

  // With TLS: the verified client certificate's common name must grant a role (any role may ask
  // for checks). Empty when it does.
  static std::string refusedPeer(const grpc::CallbackServerContext& context) {
    const auto auth = context.auth_context();
    const auto names =
        auth ? auth->FindPropertyValues("x509_common_name") : std::vector<grpc::string_ref>{};
    if (names.empty()) return "no client certificate";
    const std::string cn(names.front().data(), names.front().size());
    auto role = proto::roleOf(cn);
    return role ? std::string() : "certificate '" + cn + "': " + role.error().message;
  }

  grpc::Status answer(const RlsPlan& plan, const std::vector<Result<CheckOutcome>>& outcomes,
                      rls::RateLimitResponse& response, Instant start) const {
    const Duration latency = clock().monotonic() - start;
    for (const RlsPlan::Item& item : plan.items) {
      if (item.kind == RlsPlan::Kind::kCheck) record(outcomes[item.check], latency);
    }
    const Status st = answerRls(plan, outcomes, clock().now(), headers_, response);
    return st ? grpc::Status::OK : toGrpc(st.error());
  }

  void record(const Result<CheckOutcome>& outcome, Duration latency) const {
    if (metrics_ != nullptr) metrics_->recordCheck(Api::kRls, outcome, latency);
  }

  Router& router_;
  Metrics* metrics_;
  const bool headers_;
  bool tls_ = false;
};

// TLS server credentials from the node's files; client certificates required and verified.
Result<std::shared_ptr<grpc::ServerCredentials>> tlsCredentials(const proto::TlsFiles& files) {
  auto pem = proto::readPem(files);
  if (!pem) return pem.error();
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = pem->ca;
  options.pem_key_cert_pairs.push_back({pem->key, pem->cert});
  return grpc::SslServerCredentials(options);
}

}  // namespace

struct RlsServer::Impl {
  explicit Impl(Router& router, Metrics* metrics, bool headers)
      : service(router, metrics, headers) {}
  Service service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  bool stopped = false;
};

Result<std::unique_ptr<RlsServer>> RlsServer::start(const RlsServerOptions& options, Router& router,
                                                    Metrics* metrics) {
  auto impl = std::make_unique<Impl>(router, metrics, options.response_headers);
  grpc::ServerBuilder builder;
  const std::string address =
      (options.bind.find(':') != std::string::npos ? "[" + options.bind + "]" : options.bind) +
      ":" + std::to_string(options.port);
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (options.tls.enabled()) {
    auto secure = tlsCredentials(options.tls);
    if (!secure) return secure.error();
    credentials = *secure;
    impl->service.requireRoles();
  }
  builder.AddListeningPort(address, credentials, &impl->port);
  builder.RegisterService(&impl->service);
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxRlsMessageBytes));
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return Error{ErrorCode::kUnavailable, "cannot listen on " + address};
  }
  return std::unique_ptr<RlsServer>(new RlsServer(std::move(impl)));
}

RlsServer::RlsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RlsServer::~RlsServer() {
  shutdown();
}

std::uint16_t RlsServer::port() const {
  return static_cast<std::uint16_t>(impl_->port);
}

void RlsServer::shutdown() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  // Calls in flight finish: their checks are decided or answered by the forwarder.
  // gRPC's own clock: the deadline is gRPC's business, not the node's.
  impl_->server->Shutdown(
      gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_seconds(5, GPR_TIMESPAN)));
  impl_->server->Wait();
}

}  // namespace throttlex