#include "server/service/metrics.h"

#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace weightd::service {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// What a scrape of `metrics` serves, in the Prometheus text format.
std::string Scrape(const Metrics& metrics) {
  std::ostringstream out;
  prometheus::TextSerializer serializer;
  for (const auto& weak : metrics.collectables()) {
    if (auto collectable = weak.lock()) {
      serializer.Serialize(out, collectable->Collect());
    }
  }
  return out.str();
}

core::RoundClosed Round(std::uint32_t missing, absl::Duration took) {
  core::RoundClosed closed;
  closed.tensor = "w";
  closed.contributors = 2;
  closed.missing = missing;
  closed.duration = took;
  closed.last_wait = took / 2;
  return closed;
}

TEST(MetricsTest, RoundsAreCountedByHowTheyClosedAndTimed) {
  Metrics metrics;
  metrics.RoundClosed(Round(0, absl::Milliseconds(20)));
  metrics.RoundClosed(Round(0, absl::Seconds(3)));
  metrics.RoundClosed(Round(1, absl::Seconds(30)));
  const std::string text = Scrape(metrics);
  EXPECT_THAT(text,
              HasSubstr("weightd_rounds_closed_total{closed_on=\"all\"} 2\n"));
  EXPECT_THAT(
      text, HasSubstr("weightd_rounds_closed_total{closed_on=\"quorum\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("weightd_round_duration_seconds_count 3\n"));
  EXPECT_THAT(text, HasSubstr("weightd_round_duration_seconds_sum 33.02\n"));
  // 20 ms and 3 s are at most 5 s; 30 s is not.
  EXPECT_THAT(text,
              HasSubstr("weightd_round_duration_seconds_bucket{le=\"5\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("weightd_round_last_wait_seconds_sum 16.51\n"));
}

TEST(MetricsTest, PushesAreCountedByOutcome) {
  Metrics metrics;
  metrics.PushEnded(absl::StatusCode::kOk, /*duplicate=*/false);
  metrics.PushEnded(absl::StatusCode::kOk, /*duplicate=*/false);
  metrics.PushEnded(absl::StatusCode::kOk, /*duplicate=*/true);
  metrics.PushEnded(absl::StatusCode::kAborted, false);
  metrics.PushEnded(absl::StatusCode::kCancelled, false);
  metrics.PushEnded(absl::StatusCode::kInvalidArgument, false);
  const std::string text = Scrape(metrics);
  EXPECT_THAT(
      text,
      HasSubstr("weightd_pushes_total{code=\"OK\",outcome=\"applied\"} 2\n"));
  EXPECT_THAT(
      text,
      HasSubstr("weightd_pushes_total{code=\"OK\",outcome=\"duplicate\"} 1\n"));
  EXPECT_THAT(
      text,
      HasSubstr(
          "weightd_pushes_total{code=\"ABORTED\",outcome=\"aborted\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("weightd_pushes_total{code=\"CANCELLED\",outcome="
                              "\"cancelled\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("weightd_pushes_total{code=\"INVALID_ARGUMENT\","
                              "outcome=\"refused\"} 1\n"));
}

// A client may call any method name: only weightd's own become labels.
TEST(MetricsTest, CallsOfUnknownMethodsShareOneLabel) {
  Metrics metrics;
  metrics.CallEnded("/weightd.v1.Weightd/Push", absl::StatusCode::kOk,
                    absl::Milliseconds(5));
  metrics.CallEnded("/grpc.health.v1.Health/Check", absl::StatusCode::kOk,
                    absl::Milliseconds(1));
  for (const char* made_up : {"/weightd.v1.Weightd/Nope", "/x.Y/Z", "/junk"}) {
    metrics.CallEnded(made_up, absl::StatusCode::kUnimplemented,
                      absl::Milliseconds(1));
  }
  const std::string text = Scrape(metrics);
  EXPECT_THAT(text,
              HasSubstr("weightd_call_duration_seconds_count{code=\"OK\","
                        "method=\"Push\",service=\"weightd.v1.Weightd\"} 1\n"));
  EXPECT_THAT(
      text,
      HasSubstr("weightd_call_duration_seconds_count{code=\"OK\","
                "method=\"Check\",service=\"grpc.health.v1.Health\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("weightd_call_duration_seconds_count{code="
                              "\"UNIMPLEMENTED\",method=\"unknown\",service="
                              "\"unknown\"} 3\n"));
  EXPECT_THAT(text, Not(HasSubstr("Nope")));
}

TEST(MetricsTest, StateIsReadAtEachScrapeAndTensorSeriesAreCapped) {
  Metrics metrics(MetricsOptions{.tensor_series = 2});
  PayloadCounters payload;
  payload.Received(WireFormat::kBfloat16, PayloadPath::kStream, 100);
  payload.Sent(WireFormat::kFloat32, PayloadPath::kSharedMemory, 64);
  int scrapes = 0;
  int workers = 3;
  metrics.SetStateSource([&] {
    ++scrapes;
    MetricsState state;
    for (const char* name : {"a", "b", "c"}) {
      state.store.tensors.push_back(
          core::TensorInfo{name,
                           {4},
                           7,
                           /*participants=*/3, /*contributed=*/
                           std::string(name) == "a" ? 2u : 0u});
    }
    state.store.workers.resize(workers);
    state.value_bytes = 48;
    state.accumulator_bytes = 48;
    state.payload = &payload;
    return state;
  });
  const std::string text = Scrape(metrics);
  EXPECT_EQ(scrapes, 1);
  EXPECT_THAT(text, HasSubstr("weightd_members 3\n"));
  EXPECT_THAT(text, HasSubstr("weightd_tensors 3\n"));
  EXPECT_THAT(text,
              HasSubstr("weightd_tensor_bytes{part=\"accumulator\"} 48\n"));
  EXPECT_THAT(text, HasSubstr("weightd_open_rounds 1\n"));
  EXPECT_THAT(text, HasSubstr("weightd_open_round_participants 3\n"));
  EXPECT_THAT(text, HasSubstr("weightd_open_round_contributions 2\n"));
  EXPECT_THAT(text, HasSubstr("weightd_payload_bytes_total{direction=\"in\","
                              "format=\"bfloat16\",path=\"stream\"} 100\n"));
  EXPECT_THAT(text,
              HasSubstr("weightd_payload_bytes_total{direction=\"out\","
                        "format=\"float32\",path=\"shared_memory\"} 64\n"));
  EXPECT_THAT(payload.total_received(), 100u);
  EXPECT_THAT(text, HasSubstr("weightd_tensor_version{tensor=\"b\"} 7\n"));
  EXPECT_THAT(text, Not(HasSubstr("tensor=\"c\"")));
  EXPECT_THAT(text, HasSubstr("weightd_tensor_series_omitted 1\n"));
  // The next scrape reads the state again.
  workers = 1;
  EXPECT_THAT(Scrape(metrics), HasSubstr("weightd_members 1\n"));
  EXPECT_EQ(scrapes, 2);
}

}  // namespace
}  // namespace weightd::service
