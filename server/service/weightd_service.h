// WeightdService: the gRPC adapter over core::TensorStore.
//
// Converts wire messages to core calls and core results to wire messages;
// holds no policy. Built on the callback API: no handler ever blocks a gRPC
// thread (a pull waiting for a round is a reactor finished later by the
// push that closes it).
#ifndef WEIGHTD_SERVER_SERVICE_WEIGHTD_SERVICE_H_
#define WEIGHTD_SERVER_SERVICE_WEIGHTD_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "server/core/tensor_store.h"
#include "server/service/authorizer.h"
#include "server/service/call_limits.h"
#include "server/service/event_log.h"
#include "server/service/metrics.h"
#include "server/service/push_pacer.h"
#include "server/service/segments.h"
#include "server/service/work_queue.h"
#include "server/storage/snapshotter.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd::service {

// How far (in received bytes) a sync round's push may run ahead of the
// round's slowest live push before the service stops reading it.
inline constexpr std::uint64_t kPushLeadBytes = std::uint64_t{2} << 20;
// Most version records one GetHistory answers.
inline constexpr std::size_t kMaxHistoryRecords = 10000;

// How long a push may go without a message and still hold others back.
inline constexpr absl::Duration kPushStall = absl::Milliseconds(500);

// Every method is raw (grpc::ByteBuffer messages) and parses its messages
// itself, so that one that does not parse is refused with INVALID_ARGUMENT
// naming the call. (Generated handlers answer an undecodable unary request
// with an empty UNIMPLEMENTED, and end a client stream at an undecodable
// message as if the client had finished there.) Join, Push, Pull and
// PushPull read and write their chunks through common/tensor_stream.h (the
// framing the client shares), without a protobuf copy of the payload; the
// other methods work on the generated messages. The pieces the reactors in
// weightd_service.cc use live beside it: proto_conversions.h,
// tensor_streamer.h, reactor_wait.h.
using WeightdServiceBase = v1::Weightd::WithRawCallbackMethod_Join<
    v1::Weightd::WithRawCallbackMethod_Push<v1::Weightd::WithRawCallbackMethod_Pull<
        v1::Weightd::WithRawCallbackMethod_PushPull<v1::Weightd::WithRawCallbackMethod_Leave<
            v1::Weightd::WithRawCallbackMethod_Heartbeat<
                v1::Weightd::WithRawCallbackMethod_Barrier<
                    v1::Weightd::WithRawCallbackMethod_GetStatus<
                        v1::Weightd::WithRawCallbackMethod_TakeSnapshot<
                            v1::Weightd::WithRawCallbackMethod_AttachSegment<
                                v1::Weightd::WithRawCallbackMethod_PushSegment<
                                    v1::Weightd::WithRawCallbackMethod_PullSegment<
                                        v1::Weightd::WithRawCallbackMethod_GetHistory<
                                            v1::Weightd::
                                                WithRawCallbackMethod_DropTensor<
                                                    v1::Weightd::
                                                        Service>>>>>>>>>>>>>>;

struct ServiceOptions {
  // This server's place in the shard layout (see v1::ShardInfo), reported
  // by Join and GetStatus.
  std::uint32_t shard_index = 0;
  std::uint32_t shard_count = 1;
  // Whether AttachSegment maps workers' segments.
  bool shared_memory = true;
  // Whether a sync round's pushes are kept level (PushPacer).
  bool pace_pushes = true;
  // Admits each call (not owned; null: every caller unrestricted):
  // UNAUTHENTICATED and PERMISSION_DENIED end it before anything changes.
  const Authorizer* authorizer = nullptr;
  // Calls served at once (0: no limit); over it a call gets UNAVAILABLE.
  std::uint32_t max_calls = 0;
  // How long a Join, Push or PushPull may leave a read of its stream
  // waiting for the client before it is cut with DEADLINE_EXCEEDED
  // (InfiniteDuration: never). Cut by CutStalledReads().
  absl::Duration stall_timeout = absl::InfiniteDuration();
  // Where joins, leaves and pushes are counted (not owned; null: a Metrics
  // of the service's own, which nothing serves).
  Metrics* metrics = nullptr;
};

class WeightdService final : public WeightdServiceBase {
 public:
  // Until Attach(), every call gets UNAVAILABLE (the server is restoring).
  explicit WeightdService(const ServiceOptions& options = {});

  // Starts serving from `store`, once. `store` (and `snapshotter`, null
  // without snapshots) must outlive the service and every call in flight.
  void Attach(core::TensorStore* store, storage::Snapshotter* snapshotter);

  // Where memberships, refused calls and rounds are logged.
  EventLog& events() { return events_; }
  Metrics& metrics() { return *metrics_; }
  const PayloadCounters& payload() const { return payload_; }

  grpc::ServerReadReactor<grpc::ByteBuffer>* Join(
      grpc::CallbackServerContext* context,
      grpc::ByteBuffer* response) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* Push(
      grpc::CallbackServerContext* context,
      grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Pull(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* PushPull(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Barrier(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* TakeSnapshot(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetHistory(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DropTensor(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* AttachSegment(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* PushSegment(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* PullSegment(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;

  // Unmaps the segments of leases no worker holds any more (left, expired,
  // replaced). Called by the server's housekeeping.
  void SweepSegments();
  // Lets on the pushes paced behind one that stalled (push_pacer.h).
  // Called by the server's housekeeping.
  void TickPacer() { pacer_.Tick(); }
  // Cuts the calls whose client left a read of their stream waiting for
  // longer than the stall timeout. Called by the server's housekeeping.
  void CutStalledReads() { stalls_.Check(absl::Now()); }

 private:
  // What a call may do, and its place among the calls in flight.
  struct Admitted {
    Permissions permissions;
    CallCounter::Slot slot;
  };

  core::TensorStore* store() const;  // Null until Attach().
  // The caller's permissions for `rpc` (see Authorizer::Admit), and a call
  // slot (UNAVAILABLE over max_calls).
  absl::StatusOr<Admitted> Admit(const grpc::CallbackServerContext* context,
                                 Rpc rpc);
  // Watches the reads of a call's client stream (null if the watch is off).
  std::unique_ptr<StallWatch::Reader> WatchReads(
      grpc::CallbackServerContext* context, const char* call);

  // Written once by Attach(); snapshotter_ before store_ (release), read
  // only after store_ was seen non-null (acquire).
  std::atomic<core::TensorStore*> store_{nullptr};
  storage::Snapshotter* snapshotter_ = nullptr;
  const std::unique_ptr<Metrics> own_metrics_;  // Without options.metrics.
  Metrics* const metrics_;
  const Authorizer* const authorizer_;  // Null: no policy.
  PayloadCounters payload_;
  const bool shared_memory_;
  SegmentTable segments_;  // Same-host workers' shared memory, by lease.
  v1::ShardInfo shard_;
  EventLog events_;
  // Keeps a sync round's pushes level (push_pacer.h): lead and stall.
  PushPacer pacer_;
  CallCounter calls_;
  StallWatch stalls_;
  // Writes results into segments: when a round closes, every waiting
  // call's copy runs here, in parallel, rather than in series on the
  // thread that closed it. Declared last: destroyed (drained) first.
  WorkQueue segment_writes_{2};
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_WEIGHTD_SERVICE_H_
