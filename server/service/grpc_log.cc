#include "server/service/grpc_log.h"

#include <grpc/support/log.h>

#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace weightd::service {

LogRateLimit::Decision LogRateLimit::Admit(absl::Time now) {
  absl::MutexLock lock(&mu_);
  Decision decision;
  if (now - window_start_ >= window_) {
    decision.held_back = held_back_;
    window_start_ = now;
    shown_ = 0;
    held_back_ = 0;
  }
  if (shown_ < kLinesPerWindow) {
    ++shown_;
    decision.show = true;
  } else {
    ++held_back_;
  }
  return decision;
}

namespace {

// gpr_set_log_function takes a plain function: its state is the process's.
LogRateLimit& GrpcLogLimit() {
  static LogRateLimit* limit = new LogRateLimit(absl::Seconds(10));
  return *limit;
}

void LogThroughSpdlog(gpr_log_func_args* args) {
  const LogRateLimit::Decision decision = GrpcLogLimit().Admit(absl::Now());
  if (decision.held_back > 0) {
    spdlog::warn(
        "grpc: {} more line(s) of gRPC's log in the last window "
        "were not shown (at most {} per 10 s)",
        decision.held_back, LogRateLimit::kLinesPerWindow);
  }
  if (!decision.show) return;
  const bool error = args->severity == GPR_LOG_SEVERITY_ERROR;
  spdlog::log(error ? spdlog::level::warn : spdlog::level::debug,
              "grpc: {} ({}:{})", args->message, args->file, args->line);
}

}  // namespace

void RouteGrpcLogs() { gpr_set_log_function(&LogThroughSpdlog); }

}  // namespace weightd::service
