// What the daemon lets its callers hold at once, whoever they are: calls in
// flight (CallCounter), and reads of a stream a client leaves waiting
// (StallWatch). The connection-level limits (streams per connection,
// memory for incoming data, pings, idle connections, handshakes) are
// gRPC's own and set in server.cc; docs/security.md ("Limits") lists them
// all with their defaults.
//
// No gRPC here: a call is a slot, and cutting one is a callback.
#ifndef WEIGHTD_SERVER_SERVICE_CALL_LIMITS_H_
#define WEIGHTD_SERVER_SERVICE_CALL_LIMITS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace weightd::service {

// Counts the calls in flight and refuses one over `max` (0: no limit).
// Thread-safe.
class CallCounter {
 public:
  // Held by a call from its start to its end (move-only; empty once moved
  // from). Releases its place when destroyed.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept : counter_(other.counter_) {
      other.counter_ = nullptr;
    }
    Slot& operator=(Slot&& other) noexcept;
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot();

   private:
    friend class CallCounter;
    explicit Slot(CallCounter* counter) : counter_(counter) {}
    CallCounter* counter_ = nullptr;
  };

  explicit CallCounter(std::uint32_t max) : max_(max) {}
  CallCounter(const CallCounter&) = delete;
  CallCounter& operator=(const CallCounter&) = delete;

  // A place for one more call, or UNAVAILABLE (clients retry it with
  // backoff) naming the limit.
  absl::StatusOr<Slot> Acquire();

  std::uint32_t in_flight() const {
    return in_flight_.load(std::memory_order_relaxed);
  }
  // Calls refused since start for being over the limit.
  std::uint64_t refused() const {
    return refused_.load(std::memory_order_relaxed);
  }

 private:
  const std::uint32_t max_;
  std::atomic<std::uint32_t> in_flight_{0};
  std::atomic<std::uint64_t> refused_{0};
};

// Cuts calls whose client stopped sending in the middle of a stream (a
// push or join that sent its header and then nothing, or a chunk that
// trickles in). A reactor that reads a client stream holds a Reader, and
// says Reading() when it starts a read and Idle() when the read completed;
// Check() cuts each reader whose read has been outstanding for longer than
// the timeout. The time the server itself holds a read back (push pacing)
// or spends on a message is never counted: only a read waiting for the
// client. Thread-safe.
class StallWatch {
 public:
  // Runs once for a stalled reader, on the thread of Check() and without
  // the watch's lock, with how long the read waited. It must not assume the
  // reactor is alive: it may run while (or after) the call ends, so it
  // holds what it needs itself (see WeightdService: a reference to the
  // gRPC call).
  using Cut = std::function<void(absl::Duration waited)>;

  class Reader {
   public:
    Reader(const Reader&) = delete;
    Reader& operator=(const Reader&) = delete;
    ~Reader();  // No longer watched.

    // A read was started / completed. Any thread.
    void Reading();
    void Idle();
    // Whether the watch cut this call: set before the cut runs. A reactor
    // whose read fails checks it besides IsCancelled(), which gRPC may set
    // only after the failed read is reported: a cut call's end of stream
    // must not be taken for the client's.
    bool was_cut() const { return since_.load() == kCut; }

   private:
    friend class StallWatch;
    static constexpr std::int64_t kIdle = INT64_MIN;
    static constexpr std::int64_t kCut = INT64_MIN + 1;
    Reader(StallWatch* watch, Cut cut)
        : watch_(watch), cut_(std::make_shared<const Cut>(std::move(cut))) {}

    StallWatch* const watch_;
    const std::shared_ptr<const Cut> cut_;  // Shared with Check() as it runs.
    // When the outstanding read started (absl::ToUnixNanos), kIdle, or
    // kCut (final).
    std::atomic<std::int64_t> since_{kIdle};
  };

  // `timeout` absl::InfiniteDuration(): nothing is ever cut.
  explicit StallWatch(absl::Duration timeout) : timeout_(timeout) {}
  StallWatch(const StallWatch&) = delete;
  StallWatch& operator=(const StallWatch&) = delete;

  absl::Duration timeout() const { return timeout_; }

  // Watches a new reader (null when the watch is off). `cut` runs at most
  // once: a reader that was cut is no longer watched.
  std::unique_ptr<Reader> Watch(Cut cut);

  // Cuts every reader whose read has waited longer than the timeout at
  // `now`. Called periodically by the server's housekeeping.
  void Check(absl::Time now);

  // Readers cut since start.
  std::uint64_t cut() const { return cut_.load(std::memory_order_relaxed); }

 private:
  const absl::Duration timeout_;
  std::atomic<std::uint64_t> cut_{0};
  absl::Mutex mu_;
  absl::flat_hash_set<Reader*> readers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_CALL_LIMITS_H_
