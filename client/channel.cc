#include "client/channel.h"

#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/credentials.h"
#include "common/duration.h"
#include "common/grpc_status.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "common/wire.h"

namespace weightd {
namespace {

// Room for headers listing thousands of tensors next to a chunk.
constexpr int kMaxMessageBytes = 64 << 20;

// What each stream may have in flight towards this client: a fixed window,
// as on the server (server/service/server.cc). Without it gRPC grows the
// window by BDP probing, and a pull into a busy process parks what arrived
// faster than it was copied out: 40-100 MiB more for a 256 MiB tensor.
constexpr int kStreamWindowBytes = 4 << 20;

}  // namespace

std::string ShardClient::WhyUnreachable(absl::Time deadline) const {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  context.set_wait_for_ready(false);
  v1::GetStatusResponse response;
  const grpc::Status status =
      channel_->stub->GetStatus(&context, {}, &response);
  if (status.ok()) return "reachable now";
  return status.error_message();
}

absl::StatusOr<std::unique_ptr<ShardClient::Channel>> ShardClient::OpenChannel(
    const ClientOptions& options, const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kStreamWindowBytes);
  // Reconnect quickly after a server restart; our own retries pace calls.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // gRPC's name for how long one connection attempt (TCP, TLS and HTTP/2
  // handshakes) may take: long enough for a TLS handshake with a loaded
  // server (at 100 ms, handshakes on a busy host timed out and, taken for
  // bad certificates, ended workers), short enough that an attempt lost to
  // a cut link is made again soon after the link is back.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 5000);
  // Notice a server that vanished without closing the connection (a cut
  // link, a frozen host) within 30 s, even while a call waits for a round
  // or a barrier and no data flows; the call then fails and is retried.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kClientPingIntervalMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  WEIGHTD_ASSIGN_OR_RETURN(
      std::shared_ptr<grpc::Channel> channel,
      CreateChannel(options.tls, options.token, address, args));
  return std::make_unique<Channel>(std::move(channel));
}

absl::Status Annotate(const grpc::Status& status, absl::string_view call) {
  absl::Status s = FromGrpcStatus(status);
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(call, ": ", s.message()));
}

ShardLayout LayoutOf(const v1::ShardInfo& info) {
  return info.count() == 0 ? ShardLayout{}
                           : ShardLayout{info.index(), info.count()};
}

absl::StatusOr<std::unique_ptr<ShardClient>> ShardClient::Connect(
    const ClientOptions& options, const std::string& address,
    std::uint64_t instance) {
  WEIGHTD_RETURN_IF_ERROR(ValidateName("worker id", options.worker_id));
  WEIGHTD_ASSIGN_OR_RETURN(std::unique_ptr<Channel> channel,
                           OpenChannel(options, address));
  std::unique_ptr<ShardClient> client(
      new ShardClient(options, address, std::move(channel), instance));
  // Waits in short slices: a cancellation ends the wait at once, and the
  // wait is reported while it lasts.
  const absl::Time start = absl::Now();
  const absl::Time give_up = start + options.connect_timeout;
  absl::Time reported = absl::InfinitePast();
  absl::Time asked = absl::InfinitePast();
  std::string why = "not reachable yet";
  for (;;) {
    if (client->Cancelled()) return Cancellation::Status("Connect");
    const absl::Time slice =
        std::min(absl::Now() + absl::Milliseconds(100), give_up);
    if (client->channel_->channel->WaitForConnected(
            absl::ToChronoTime(slice))) {
      break;
    }
    const absl::Time now = absl::Now();
    if (now - asked >= absl::Seconds(1) &&
        client->channel_->channel->GetState(false) ==
            GRPC_CHANNEL_TRANSIENT_FAILURE) {
      asked = now;
      why = client->WhyUnreachable(std::min(give_up, now + absl::Seconds(1)));
      // A certificate that does not verify will not verify on the next
      // attempt either (nor will a plaintext server speak TLS): say so now
      // rather than at the end of the timeout.
      if (UsesTls(options.tls) && IsLastingTlsFailure(why)) {
        return absl::UnavailableError(absl::StrCat(
            "the TLS handshake with weightd at ", address, " failed: ", why,
            "; ", ConnectHint(options.tls, why)));
      }
    }
    if (now >= give_up) {
      return absl::UnavailableError(absl::StrCat(
          "cannot reach weightd at ", address, " within ",
          absl::FormatDuration(options.connect_timeout),
          " (--connect_timeout): ", why, "; ", ConnectHint(options.tls, why)));
    }
    if (now - start >= absl::Seconds(1) &&
        now - reported >= options.progress_interval) {
      reported = now;
      client->Log(absl::StrCat(
          "waiting for weightd at ", address, " (", HumanDuration(now - start),
          " of ", absl::FormatDuration(options.connect_timeout), "): ", why));
    }
  }
  // The chunk size is the server's: learn it before sending any payload.
  // (Retried: a server restoring a snapshot answers UNAVAILABLE for a while.)
  v1::GetStatusResponse status;
  WEIGHTD_RETURN_IF_ERROR(
      client->UnaryWithRetries("GetStatus", [&](grpc::ClientContext* context) {
        return client->channel_->stub->GetStatus(context, {}, &status);
      }));
  client->chunk_bytes_ = status.chunk_bytes();
  client->layout_ = LayoutOf(status.shard());
  if (client->chunk_bytes_ < kMinChunkBytes ||
      client->chunk_bytes_ % kFloatBytes != 0) {
    return absl::DataLossError("server announced an invalid chunk size");
  }
  return client;
}

Cancellation::Registration ShardClient::CancelsOnCancel(
    grpc::ClientContext& context) const {
  return Cancellation::Registration(options_.cancellation.get(),
                                    [&context] { context.TryCancel(); });
}

std::chrono::system_clock::time_point ShardClient::CallDeadline() const {
  return std::chrono::system_clock::now() +
         absl::ToChronoMilliseconds(options_.call_timeout);
}

}  // namespace weightd
