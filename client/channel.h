// The gRPC channel to one weightd server and what every call of
// ShardClient over it shares: the raw streaming methods, per-call
// deadlines and cancellation (member definitions in channel.cc), the
// annotation of a call's status, the shard layout a server reports.
// Internal to the client library.
#ifndef WEIGHTD_CLIENT_CHANNEL_H_
#define WEIGHTD_CLIENT_CHANNEL_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "client/shard_client.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {

// Push, Pull and PushPull are called as raw methods (grpc::ByteBuffer
// messages, common/chunk_codec.h), through the factories generated stubs
// use; the other calls go through the generated stub.
struct ShardClient::Channel {
  explicit Channel(std::shared_ptr<grpc::Channel> c)
      : channel(std::move(c)),
        stub(v1::Weightd::NewStub(channel)),
        push("/weightd.v1.Weightd/Push",
             grpc::internal::RpcMethod::CLIENT_STREAMING, channel),
        pull("/weightd.v1.Weightd/Pull",
             grpc::internal::RpcMethod::SERVER_STREAMING, channel),
        push_pull("/weightd.v1.Weightd/PushPull",
                  grpc::internal::RpcMethod::BIDI_STREAMING, channel) {}

  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Weightd::Stub> stub;
  const grpc::internal::RpcMethod push;
  const grpc::internal::RpcMethod pull;
  const grpc::internal::RpcMethod push_pull;
};

// `status` as an absl::Status (its code kept), the message prefixed with
// "`call`: ".
absl::Status Annotate(const grpc::Status& status, absl::string_view call);

// The layout a server reports; a count of 0 comes from a server that
// predates sharding (then: shard 0 of 1).
ShardLayout LayoutOf(const v1::ShardInfo& info);

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_CHANNEL_H_
