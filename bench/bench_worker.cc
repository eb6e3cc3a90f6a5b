// bench_worker: one worker process of a benchmark scenario (scripts/bench.sh).
// Joins a weightd server with a tensor layout, then runs sync rounds: all
// workers enter a barrier, then each times one PushPull of every tensor.
// The round time of a scenario is the slowest worker's PushPull. Worker r
// pushes the value r + 1 everywhere, so the averaged result must be
// (W + 1) / 2; a wrong value fails the run.
// Each measured round prints one JSON line: {"rep": i, "secs": s}.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "bench/model_shapes.h"
#include "client/client.h"
#include "client/credential_flags.h"

ABSL_FLAG(std::string, server, "127.0.0.1:7070", "weightd address.");
ABSL_FLAG(int, rank, 0, "This worker's index, 0..workers-1.");
ABSL_FLAG(int, workers, 1, "Workers in the scenario.");
ABSL_FLAG(std::string, layout, "single",
          "single: one tensor of --bytes; many: --count tensors sharing "
          "--bytes; resnet: ResNet-50's parameter shapes (~100 MiB).");
ABSL_FLAG(uint64_t, bytes, 1 << 20, "Total bytes (single, many).");
ABSL_FLAG(int, count, 1, "Tensors (many).");
ABSL_FLAG(std::string, wire_format, "float32",
          "float32, bfloat16 or float16 on the wire.");
ABSL_FLAG(int, reps, 10, "Measured rounds (after one warm-up round).");
ABSL_FLAG(uint64_t, split_bytes, weightd::ClientOptions{}.split_bytes,
          "Sharded servers: tensors above this are split over the shards.");
ABSL_FLAG(bool, shared_memory, false,
          "Move values through shared memory when on the daemon's host "
          "(ClientOptions::shared_memory; off here so that the scenarios "
          "measure the stream path unless they ask).");
ABSL_FLAG(bool, in_place, false,
          "With --shared_memory: keep the tensors in the segment "
          "(Client::SharedBufferFor), so that no byte is copied in this "
          "process.");
ABSL_FLAG(std::string, joined_file, "",
          "If set, created once every worker has joined (before the rounds).");

namespace {

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int rank = absl::GetFlag(FLAGS_rank);
  const int workers = absl::GetFlag(FLAGS_workers);
  std::vector<std::vector<std::int64_t>> shapes;
  const std::string layout = absl::GetFlag(FLAGS_layout);
  if (layout == "resnet") {
    shapes = weightd::bench::ResNet50Shapes();
  } else {
    const int count = layout == "many" ? absl::GetFlag(FLAGS_count) : 1;
    const auto floats =
        static_cast<std::int64_t>(absl::GetFlag(FLAGS_bytes) / 4 / count);
    shapes.assign(count, {floats});
  }
  std::vector<std::vector<float>> buffers;
  std::vector<weightd::TensorRef> tensors;
  buffers.reserve(shapes.size());
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    std::int64_t n = 1;
    for (std::int64_t d : shapes[i]) n *= d;
    buffers.emplace_back(n, 0.0f);
    tensors.push_back(
        {absl::StrCat("t", i), shapes[i], absl::MakeSpan(buffers.back())});
  }

  weightd::ClientOptions options;
  options.address = absl::GetFlag(FLAGS_server);
  options.worker_id = absl::StrCat("bench-", rank);
  options.split_bytes = absl::GetFlag(FLAGS_split_bytes);
  options.shared_memory = absl::GetFlag(FLAGS_shared_memory);
  options.tls = weightd::TlsOptionsFromFlags();
  absl::StatusOr<std::string> token = weightd::TokenFromFlags();
  if (!token.ok()) {
    std::fprintf(stderr, "bench_worker: %s\n",
                 std::string(token.status().message()).c_str());
    return 2;
  }
  options.token = *std::move(token);
  if (!weightd::ParseWireFormat(absl::GetFlag(FLAGS_wire_format),
                                &options.wire_format)) {
    std::fprintf(stderr, "bench_worker: unknown --wire_format\n");
    return 2;
  }
  auto client = weightd::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "bench_worker: %s\n",
                 client.status().ToString().c_str());
    return 1;
  }
  auto check = [&](const absl::Status& s, const char* what) {
    if (s.ok()) return true;
    std::fprintf(stderr, "bench_worker %d: %s: %s\n", rank, what,
                 s.ToString().c_str());
    return false;
  };
  if (!check((*client)->Join(tensors), "Join") ||
      !check((*client)->Barrier("joined", workers), "Barrier")) {
    return 1;
  }
  // Where the values live: this process's buffers, or (--in_place) the
  // tensors' places in the shared-memory segment.
  std::vector<absl::Span<float>> values;
  std::vector<weightd::SharedBuffer> shared;
  for (auto& b : buffers) values.push_back(absl::MakeSpan(b));
  if (absl::GetFlag(FLAGS_in_place)) {
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      auto buffer = (*client)->SharedBufferFor(tensors[i].name);
      if (!check(buffer.status(), "SharedBufferFor")) return 1;
      std::copy(buffers[i].begin(), buffers[i].end(), buffer->values.begin());
      values[i] = tensors[i].data = buffer->values;
      shared.push_back(*std::move(buffer));
    }
  }
  if (!absl::GetFlag(FLAGS_joined_file).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_joined_file)) << "joined\n";
  }
  const float expected = (workers + 1) / 2.0f;
  for (int rep = -1; rep < absl::GetFlag(FLAGS_reps); ++rep) {
    for (auto& v : values) std::fill(v.begin(), v.end(), float(rank + 1));
    if (!check((*client)->Barrier(absl::StrCat("round-", rep), workers),
               "Barrier")) {
      return 1;
    }
    const double start = Now();
    if (!check((*client)->PushPull(tensors), "PushPull")) return 1;
    const double secs = Now() - start;
    for (const auto& b : values) {
      if (std::fabs(b.front() - expected) > 1e-5f ||
          std::fabs(b.back() - expected) > 1e-5f) {
        std::fprintf(stderr, "bench_worker %d: mean %g, expected %g\n", rank,
                     b.front(), expected);
        return 1;
      }
    }
    if (rep >= 0) {
      std::printf("{\"rep\": %d, \"secs\": %.9f, \"start\": %.9f}\n", rep, secs,
                  start);
      std::fflush(stdout);
    }
  }
  (void)(*client)->Leave();
  return 0;
}
