// weightd_worker: trains a one-hidden-layer MLP on one shard of Fashion-MNIST
// and averages its weights with the other workers through a weightd server
// (local SGD: --local_steps SGD steps on local data, then one averaging round).
//
// Four workers of one task, the first printing progress:
//   weightd_worker --server=127.0.0.1:7070 --workers=4 --rank=0 --eval
//   weightd_worker --server=127.0.0.1:7070 --workers=4 --rank=1   (2, 3 alike)
// Two tasks sharing only the hidden layer: run ranks 0-2 as above and
//   weightd_worker --workers=4 --rank=3 --task=upper2 --train_limit=300 --eval
// The same upper2 worker without the others' help (same 300 labels):
//   weightd_worker --standalone --workers=4 --rank=3 --task=upper2
//                  --train_limit=300
//
// Shared tensors: hidden/w, hidden/b (every worker), <task>/head/w,
// <task>/head/b (workers of the task, with --share_head) and
// metrics/<task>/train_loss, a 1-element tensor in which each worker pushes
// its mean loss of the round weighted by its samples, so that the average the
// server returns is the task's mean train loss over all its workers.
//
// With --check_counts (the fault tests) each worker also pushes
// checks/counts, 2048 floats each 10^rank, first in every push, and checks
// every element of the average it gets back: it must be the mean of distinct
// workers' values (decimal digits 0 or 1), holding this worker's own digit
// unless the round moved on without it. A round that counted a worker or a
// chunk of its push twice, or silently dropped a push, fails the worker.
//
// Experiments (issue 17; bench/experiments.py runs them):
//   --policy=TEXT  declares how the server combines this worker's tensors
//     (docs/algorithms.md), e.g. "optimizer=adam lr=0.01 aggregator=median":
//     TensorRef.policy of the model's tensors. The bookkeeping tensors
//     (metrics/..., checks/counts) get only its consistency and staleness,
//     plus "optimizer=plain aggregator=mean": the train loss stays the
//     workers' mean (and checks/counts exact) whatever the model's policy.
//     Empty (the default): nothing declared, the server's defaults apply.
//   --partition=dirichlet --dirichlet_alpha=A --partition_seed=N: label-
//     skewed shards instead of the IID ones (examples/partition.h): for each
//     class, its examples are split over the --workers shards in proportions
//     drawn from Dirichlet(A). Every worker computes the same partition from
//     the seed and keeps shard --rank. Each worker logs its shard's class
//     histogram to stderr at start (IID shards too).
//   --corrupt=signflip|noise --corrupt_scale=S: a bad worker. It trains as
//     usual, but what it pushes as its model's weights (same update kind,
//     same push weight as an honest worker) is its weights times -S
//     (signflip) or i.i.d. normal values with mean 0 and standard deviation
//     S (noise; the default S = 10 is about 200 times the spread of the
//     initial hidden weights). It still pulls the average and trains on.
//   --slowdown=F: a straggler. After the local steps of a round it sleeps
//     F - 1 times as long as they took, so it is F times slower.
//
// The worker with --eval prints, after every round,
//   round R  train_loss L  test_acc A  bytes B  secs S
// (A: accuracy on the 10000 test images, or the first --test_limit; B:
// payload bytes the server has received and sent so far; S: seconds since
// this worker started) and finally `final test accuracy: 0.XXXX`. On error it
// prints the status to stderr and exits with 1.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/client.h"
#include "client/credential_flags.h"
#include "client/shard_plan.h"
#include "common/startup.h"
#include "common/status_macros.h"
#include "examples/corruption.h"
#include "examples/fashion_mnist.h"
#include "examples/mlp.h"
#include "examples/partition.h"

ABSL_FLAG(std::string, server, "",
          "weightd's address (gRPC target), or every shard's as a "
          "comma-separated list, or one DNS name resolving to all shards "
          "(default: $WEIGHTD_SERVERS, else 127.0.0.1:7070).");
ABSL_FLAG(std::string, worker_id, "", "Worker id; empty means <task>-<rank>.");
ABSL_FLAG(std::uint64_t, split_bytes, weightd::ClientOptions{}.split_bytes,
          "Sharded servers: tensors larger than this are split by rows over "
          "every shard (the same on every worker).");
ABSL_FLAG(absl::Duration, connect_timeout, absl::Seconds(60),
          "How long to wait for every server to be reachable (a worker may "
          "start before its servers).");
ABSL_FLAG(int, rank, -1,
          "Which shard of the training set to train on, 0..workers-1. -1 "
          "(the default): the server hands out ranks in the order workers "
          "pass the start barrier (distinct for the first --workers; later "
          "ones wrap around), and the worker id is <task>-<host name>-<pid> "
          "unless --worker_id is given.");
ABSL_FLAG(int, workers, 1,
          "Number of shards the 60000 training images are split into.");
ABSL_FLAG(int, rounds, 50, "Number of averaging rounds.");
ABSL_FLAG(int, local_steps, 400, "SGD steps before each averaging round.");
ABSL_FLAG(int, batch, 16, "Mini-batch size.");
ABSL_FLAG(double, lr, 0.15,
          "Learning rate of the first round; it decays to 0 on a cosine over "
          "the rounds.");
ABSL_FLAG(int, hidden, 128, "Hidden units.");
ABSL_FLAG(std::uint64_t, seed, 1,
          "Seeds the initial model (the first worker to join sets the shared "
          "one) and, with --rank, the order of the mini-batches.");
ABSL_FLAG(std::string, task, "fashion10",
          "fashion10: the 10 Fashion-MNIST classes; upper2: upper-body "
          "garment (T-shirt/top, Pullover, Coat, Shirt) or not.");
ABSL_FLAG(int, train_limit, 0,
          "Train on the first N examples of the shard only (0: all of it).");
ABSL_FLAG(bool, share_head, true,
          "Average the head with the other workers of the task too; the "
          "hidden layer is always averaged.");
ABSL_FLAG(int, test_limit, 0,
          "With --eval: evaluate on the first N of the 10000 test images "
          "only (0: all of them), e.g. to keep evaluation from dominating "
          "short rounds.");
ABSL_FLAG(bool, eval, false,
          "Evaluate the averaged model on the 10000 test images after every "
          "round and print the progress.");
ABSL_FLAG(bool, start_barrier, true,
          "After Join, wait until --workers workers have joined, so that the "
          "first round averages all of them (skipped when the job is already "
          "under way, e.g. for a restarted worker).");
ABSL_FLAG(absl::Duration, barrier_timeout, absl::Minutes(5),
          "How long to wait at the start barrier for --workers workers; then "
          "the worker exits, saying how many came.");
ABSL_FLAG(bool, standalone, false,
          "Train alone, without a server (implies --eval).");
ABSL_FLAG(std::string, wire_format, "float32",
          "Format of pushed and pulled values: float32, bfloat16 or float16 "
          "(the 16-bit ones halve the bytes; the server averages in float32).");
ABSL_FLAG(bool, check_counts, false,
          "Also push checks/counts and fail if a round's average is not that "
          "of distinct workers including this one (see the top of "
          "train_worker.cc). Sync mode, distinct --rank values below 7, the "
          "same --local_steps and --batch on every worker.");
ABSL_FLAG(std::string, policy, "",
          "How the server combines the model's tensors, declared at Join "
          "(docs/algorithms.md), e.g. \"optimizer=adam lr=0.01 "
          "aggregator=median\" or \"consistency=bounded staleness=2\". The "
          "metrics/ and checks/ tensors get only its consistency and "
          "staleness, with optimizer=plain aggregator=mean. Empty: the "
          "server's defaults (--policy, --policy_file of weightd).");
ABSL_FLAG(std::string, partition, "iid",
          "How the training set is split over the --workers shards: iid "
          "(example i goes to shard i % workers) or dirichlet (label skew: "
          "each class is split over the shards in proportions drawn from "
          "Dirichlet(--dirichlet_alpha), seeded by --partition_seed, the "
          "same on every worker; examples/partition.h).");
ABSL_FLAG(double, dirichlet_alpha, 0.5,
          "--partition=dirichlet: the concentration; 0.1 gives each shard "
          "mostly one or two classes, 100 is close to iid.");
ABSL_FLAG(std::uint64_t, partition_seed, 1,
          "--partition=dirichlet: seeds the partition; every worker of a job "
          "must use the same value.");
ABSL_FLAG(std::string, corrupt, "none",
          "A bad worker, for robust-aggregation experiments: none; signflip "
          "(pushes its weights times -S); noise (pushes i.i.d. normal values, "
          "mean 0, standard deviation S), where S is --corrupt_scale. The "
          "update kind and push weight are an honest worker's; it still pulls "
          "the average.");
ABSL_FLAG(double, corrupt_scale, 10,
          "S of --corrupt: the factor of signflip, the standard deviation of "
          "noise (10: about 200 times the initial hidden weights' spread).");
ABSL_FLAG(double, slowdown, 1,
          "A straggler: after each round's local steps, sleep F - 1 times as "
          "long as they took (F >= 1; 3: three times slower).");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Directory holding the gzipped Fashion-MNIST IDX files.");

namespace weightd::examples {
namespace {

using SteadyClock = std::chrono::steady_clock;

// Set by SIGTERM or SIGINT (docker stop, a scale-down, Ctrl-C): the worker
// stops what it is doing (training, connecting, waiting for a round or a
// barrier, retrying), leaves, and exits 0 within about a second, so the
// sharing groups shrink at once instead of waiting for its lease to expire.
std::atomic<int> g_stop_signal{0};
bool Stopping() { return g_stop_signal.load() != 0; }

// --check_counts: 10^rank must stay exact in a float's mean of up to this
// many workers.
constexpr int kMaxChecked = 6;
constexpr std::size_t kCountsElements = 2048;

struct WorkerConfig {
  std::string server;
  std::string worker_id;
  absl::Duration connect_timeout;
  std::uint64_t split_bytes = 0;
  int rank = 0;
  int workers = 1;
  int rounds = 1;
  int local_steps = 1;
  int batch = 1;
  float lr = 0;
  int hidden = 1;
  std::uint64_t seed = 0;
  std::string task;
  int classes = 0;
  int train_limit = 0;
  int test_limit = 0;
  bool share_head = true;
  bool eval = false;
  bool start_barrier = true;
  absl::Duration barrier_timeout;
  bool standalone = false;
  WireFormat wire_format = WireFormat::kFloat32;
  bool check_counts = false;
  std::string policy;
  bool dirichlet = false;  // --partition=dirichlet; else iid.
  double dirichlet_alpha = 0;
  std::uint64_t partition_seed = 0;
  Corruption corruption = Corruption::kNone;
  float corrupt_scale = 0;
  double slowdown = 1;
  std::string data_dir;
  std::string token;  // --token_file's.
};

// Every shard of a Dirichlet partition holds at least this many examples
// (the draw is repeated otherwise), whatever --batch: every worker of a job
// must compute the same partition.
constexpr int kMinShardExamples = 64;

// Reads and checks the flags. INVALID_ARGUMENT names the first bad one.
absl::StatusOr<WorkerConfig> ConfigFromFlags() {
  WorkerConfig config;
  config.server = absl::GetFlag(FLAGS_server);
  if (config.server.empty()) {
    const char* env = std::getenv("WEIGHTD_SERVERS");
    config.server = env != nullptr && *env != '\0' ? env : "127.0.0.1:7070";
  }
  config.connect_timeout = absl::GetFlag(FLAGS_connect_timeout);
  WEIGHTD_ASSIGN_OR_RETURN(config.token, TokenFromFlags());
  config.split_bytes = absl::GetFlag(FLAGS_split_bytes);
  config.rank = absl::GetFlag(FLAGS_rank);
  config.workers = absl::GetFlag(FLAGS_workers);
  config.rounds = absl::GetFlag(FLAGS_rounds);
  config.local_steps = absl::GetFlag(FLAGS_local_steps);
  config.batch = absl::GetFlag(FLAGS_batch);
  config.lr = static_cast<float>(absl::GetFlag(FLAGS_lr));
  config.hidden = absl::GetFlag(FLAGS_hidden);
  config.seed = absl::GetFlag(FLAGS_seed);
  config.task = absl::GetFlag(FLAGS_task);
  config.train_limit = absl::GetFlag(FLAGS_train_limit);
  config.test_limit = absl::GetFlag(FLAGS_test_limit);
  config.share_head = absl::GetFlag(FLAGS_share_head);
  config.start_barrier = absl::GetFlag(FLAGS_start_barrier);
  config.barrier_timeout = absl::GetFlag(FLAGS_barrier_timeout);
  config.standalone = absl::GetFlag(FLAGS_standalone);
  config.eval = absl::GetFlag(FLAGS_eval) || config.standalone;
  config.data_dir = absl::GetFlag(FLAGS_data_dir);
  config.check_counts = absl::GetFlag(FLAGS_check_counts);
  config.policy = absl::GetFlag(FLAGS_policy);
  const std::string partition = absl::GetFlag(FLAGS_partition);
  if (partition != "iid" && partition != "dirichlet") {
    return absl::InvalidArgumentError(
        absl::StrCat("--partition=", partition, ": use iid or dirichlet"));
  }
  config.dirichlet = partition == "dirichlet";
  config.dirichlet_alpha = absl::GetFlag(FLAGS_dirichlet_alpha);
  if (!(config.dirichlet_alpha > 0 && std::isfinite(config.dirichlet_alpha))) {
    return absl::InvalidArgumentError(
        "--dirichlet_alpha must be positive and finite");
  }
  config.partition_seed = absl::GetFlag(FLAGS_partition_seed);
  if (!ParseCorruption(absl::GetFlag(FLAGS_corrupt), &config.corruption)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--corrupt=", absl::GetFlag(FLAGS_corrupt),
                     ": use none, signflip or noise"));
  }
  const double corrupt_scale = absl::GetFlag(FLAGS_corrupt_scale);
  if (!(corrupt_scale > 0 && corrupt_scale < 1e30)) {
    return absl::InvalidArgumentError(
        "--corrupt_scale must be positive and finite");
  }
  config.corrupt_scale = static_cast<float>(corrupt_scale);
  config.slowdown = absl::GetFlag(FLAGS_slowdown);
  if (!(config.slowdown >= 1 && config.slowdown < 1e6)) {
    return absl::InvalidArgumentError("--slowdown must be in [1, 1e6)");
  }
  if (!ParseWireFormat(absl::GetFlag(FLAGS_wire_format), &config.wire_format)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--wire_format=", absl::GetFlag(FLAGS_wire_format),
                     ": use float32, bfloat16 or float16"));
  }
  config.worker_id = absl::GetFlag(FLAGS_worker_id);
  if (config.worker_id.empty()) {
    if (config.rank >= 0) {
      config.worker_id = absl::StrCat(config.task, "-", config.rank);
    } else {
      // Unique per process: two workers started alike never share an id.
      char host[256] = {};
      ::gethostname(host, sizeof(host) - 1);
      config.worker_id = absl::StrCat(config.task, "-", host, "-", ::getpid());
    }
  }

  if (config.task == "fashion10") {
    config.classes = kFashionClasses;
  } else if (config.task == "upper2") {
    config.classes = kUpperBodyClasses;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--task=", config.task, ": expected fashion10 or upper2"));
  }
  if (config.workers < 1) {
    return absl::InvalidArgumentError("--workers must be >= 1");
  }
  if (config.rank < -1 || config.rank >= config.workers) {
    return absl::InvalidArgumentError(
        "--rank must be in [0, --workers), or -1 for a rank from the server");
  }
  if (config.rank == -1 && config.standalone) config.rank = 0;
  if (config.rounds < 1 || config.local_steps < 1 || config.batch < 1 ||
      config.hidden < 1) {
    return absl::InvalidArgumentError(
        "--rounds, --local_steps, --batch and --hidden must be >= 1");
  }
  if (!(config.lr > 0 && std::isfinite(config.lr))) {
    return absl::InvalidArgumentError("--lr must be positive and finite");
  }
  if (config.train_limit < 0 || config.test_limit < 0) {
    return absl::InvalidArgumentError(
        "--train_limit and --test_limit must be >= 0");
  }
  if (config.standalone && config.corruption != Corruption::kNone) {
    return absl::InvalidArgumentError(
        "--corrupt needs a server to push to; not with --standalone");
  }
  if (config.check_counts &&
      (config.rank < 0 || config.workers > kMaxChecked)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--check_counts needs --rank and --workers <= ", kMaxChecked));
  }
  return config;
}

// The worker's training data: shard `config.rank` of `all` (--partition),
// cut to --train_limit and labeled for its task. Logs the shard's histogram
// of the 10 Fashion-MNIST classes to stderr, with `prefix`.
absl::StatusOr<Dataset> TrainShard(const WorkerConfig& config,
                                   const Dataset& all,
                                   absl::string_view prefix) {
  Dataset shard;
  std::string how = "iid";
  if (config.dirichlet) {
    WEIGHTD_ASSIGN_OR_RETURN(
        const std::vector<std::vector<int>> shards,
        DirichletPartition(all.labels, kFashionClasses, config.workers,
                           config.dirichlet_alpha, config.partition_seed,
                           kMinShardExamples));
    shard = Subset(all, shards[config.rank]);
    how = absl::StrCat("dirichlet alpha ", config.dirichlet_alpha, " seed ",
                       config.partition_seed);
  } else {
    WEIGHTD_ASSIGN_OR_RETURN(shard, Shard(all, config.rank, config.workers));
  }
  if (config.train_limit > 0) Truncate(&shard, config.train_limit);
  absl::FPrintF(stderr, "%s: shard %d of %d (%s): %s\n", prefix, config.rank,
                config.workers, how,
                HistogramText(ClassHistogram(shard, kFashionClasses)));
  if (config.task == "upper2") ToUpperBodyLabels(&shard);
  return shard;
}

// The policy the worker declares for its bookkeeping tensors (metrics/...,
// checks/counts) when --policy is `policy`: its consistency and staleness
// (a PushPull moves every tensor in one call), and the plain mean, so that
// they report the workers' mean. Empty for an empty `policy`.
std::string BookkeepingPolicy(absl::string_view policy) {
  if (policy.empty()) return "";
  std::vector<std::string> kept;
  for (absl::string_view token :
       absl::StrSplit(policy, absl::ByAnyChar(" \t\n,"), absl::SkipEmpty())) {
    if (absl::StartsWith(token, "consistency=") ||
        absl::StartsWith(token, "staleness=")) {
      kept.emplace_back(token);
    }
  }
  kept.push_back("optimizer=plain");
  kept.push_back("aggregator=mean");
  return absl::StrJoin(kept, " ");
}

absl::StatusOr<Dataset> LoadTestSet(const WorkerConfig& config) {
  WEIGHTD_ASSIGN_OR_RETURN(Dataset test,
                           LoadFashionMnist(config.data_dir, Split::kTest));
  if (config.test_limit > 0) Truncate(&test, config.test_limit);
  if (config.task == "upper2") ToUpperBodyLabels(&test);
  return test;
}

// --check_counts: `mean` is an element of checks/counts after a round.
// Returns the contributing ranks, or an error if no set of distinct workers
// averages to it.
absl::StatusOr<std::vector<int>> CountedRanks(float mean, int workers) {
  for (int n = 1; n <= workers; ++n) {
    const double sum = static_cast<double>(mean) * n;
    const double digits = std::round(sum);
    if (std::abs(sum - digits) > 0.01 * n) continue;
    std::vector<int> ranks;
    std::uint64_t rest = static_cast<std::uint64_t>(digits);
    bool ok = true;
    for (int rank = 0; rest > 0 && ok; ++rank, rest /= 10) {
      if (rest % 10 == 1) ranks.push_back(rank);
      ok = rest % 10 <= 1 && rank < workers;
    }
    if (ok && static_cast<int>(ranks.size()) == n) return ranks;
  }
  return absl::DataLossError(absl::StrCat(
      "checks/counts averaged to ", mean,
      ", which no set of distinct workers gives: a round counted a worker "
      "(or a part of its push) twice"));
}

// --check_counts: checks every element of `counts` after a round that did
// (`counted`) or did not count this worker's push.
absl::Status CheckCounts(absl::Span<const float> counts, int rank, int workers,
                         bool counted, int server_round) {
  for (std::size_t i = 0; i < counts.size(); ++i) {
    // Pulled without a push (the round moved on) before any round closed.
    if (!counted && counts[i] == 0) continue;
    absl::StatusOr<std::vector<int>> ranks = CountedRanks(counts[i], workers);
    if (!ranks.ok()) {
      return absl::DataLossError(absl::StrCat("round ", server_round,
                                              ", element ", i, ": ",
                                              ranks.status().message()));
    }
    const bool mine =
        std::find(ranks->begin(), ranks->end(), rank) != ranks->end();
    if (counted && !mine) {
      return absl::DataLossError(absl::StrCat(
          "round ", server_round, ", element ", i, ": the push of rank ", rank,
          " succeeded but the round's average holds only ranks ",
          absl::StrJoin(*ranks, ","), ": the push was dropped"));
    }
  }
  return absl::OkStatus();
}

// Cosine decay from `lr` in round 1 towards 0 after the last round. Every
// worker computes the same rate, and the small late steps let the averaged
// model settle instead of hovering at the noise level of a constant rate.
float RoundLearningRate(float lr, int round, int rounds) {
  constexpr double kPi = 3.14159265358979323846;
  const double progress = static_cast<double>(round - 1) / rounds;
  return static_cast<float>(lr * 0.5 * (1 + std::cos(kPi * progress)));
}

// Trains for config.rounds rounds, averaging `shared` (which must include
// `*train_loss`, and `*counts` if not null) through `client` after each one;
// `client` is null when standalone. The tensors must already be joined.
// With --corrupt, the values of `model_tensors` (the model's, among
// `shared`) are corrupted before each push. --slowdown sleeps through
// `cancellation`.
absl::Status TrainRounds(const WorkerConfig& config, const Dataset& train,
                         const Dataset& test, Mlp* model,
                         absl::Span<const TensorRef> shared,
                         absl::Span<const TensorRef> model_tensors,
                         float* train_loss, std::vector<float>* counts,
                         Client* client, Cancellation* cancellation,
                         SteadyClock::time_point start) {
  // A batch order of its own for every worker.
  WEIGHTD_ASSIGN_OR_RETURN(
      std::unique_ptr<BatchSampler> sampler,
      BatchSampler::Create(
          train.size(), config.batch,
          config.seed ^ (0x9E3779B97F4A7C15ULL * (config.rank + 1))));
  const double samples_per_round =
      static_cast<double>(config.local_steps) * config.batch;
  // --corrupt=noise: a stream of its own for every worker.
  std::mt19937_64 corruption_rng(config.seed ^
                                 (0xD1B54A32D192ED03ULL * (config.rank + 1)));
  double accuracy = 0;
  for (int round = 1; round <= config.rounds; ++round) {
    if (Stopping()) break;
    const float lr = RoundLearningRate(config.lr, round, config.rounds);
    double loss_sum = 0;
    const SteadyClock::time_point steps_start = SteadyClock::now();
    for (int step = 0; step < config.local_steps && !Stopping(); ++step) {
      WEIGHTD_ASSIGN_OR_RETURN(double loss,
                               model->TrainStep(train, sampler->Next(), lr));
      loss_sum += loss;
    }
    if (config.slowdown > 1 && !Stopping()) {
      const std::chrono::duration<double> took =
          SteadyClock::now() - steps_start;
      cancellation->SleepFor(
          absl::Seconds(took.count() * (config.slowdown - 1)));
    }
    if (Stopping()) break;
    *train_loss = static_cast<float>(loss_sum / config.local_steps);
    if (client != nullptr) {
      for (const TensorRef& tensor : model_tensors) {
        Corrupt(config.corruption, config.corrupt_scale, &corruption_rng,
                tensor.data);
      }
    }
    std::uint64_t bytes = 0;
    // The server's number of the round this worker took part in (the
    // version before it closed), as the server's log numbers it.
    int server_round = round - 1;
    if (client != nullptr) {
      if (counts != nullptr) {
        std::fill(counts->begin(), counts->end(),
                  static_cast<float>(std::pow(10.0, config.rank)));
      }
      const std::uint64_t missed = client->stats().rounds_missed;
      absl::Status pushed = client->PushPull(
          shared, {.kind = UpdateKind::kWeights, .weight = samples_per_round});
      if (absl::IsCancelled(pushed) && Stopping()) break;
      WEIGHTD_RETURN_IF_ERROR(pushed);
      server_round = static_cast<int>(*client->Version("hidden/w")) - 1;
      if (counts != nullptr) {
        WEIGHTD_RETURN_IF_ERROR(CheckCounts(
            *counts, config.rank, config.workers,
            /*counted=*/client->stats().rounds_missed == missed, server_round));
      }
    }
    if (!config.eval) continue;

    WEIGHTD_ASSIGN_OR_RETURN(Evaluation evaluation, model->Evaluate(test));
    accuracy = evaluation.accuracy;
    if (client != nullptr) {
      WEIGHTD_ASSIGN_OR_RETURN(ServerStatus server, client->GetStatus());
      bytes = server.bytes_received + server.bytes_sent;
    }
    const std::chrono::duration<double> elapsed = SteadyClock::now() - start;
    absl::PrintF(
        "round %d  train_loss %.4f  test_acc %.4f  bytes %d  secs %.1f\n",
        server_round, *train_loss, accuracy, bytes, elapsed.count());
    std::fflush(stdout);
  }
  if (client != nullptr && client->stats().rounds_missed > 0) {
    // stderr: the eval worker's last stdout line stays the accuracy.
    absl::FPrintF(stderr,
                  "weightd_worker: %d round(s) moved on without this worker; "
                  "it continued from the shared value\n",
                  client->stats().rounds_missed);
  }
  if (Stopping()) {
    absl::FPrintF(stderr,
                  "weightd_worker: stopping on a signal (%s); leaving the "
                  "job\n",
                  g_stop_signal.load() == SIGTERM ? "SIGTERM" : "SIGINT");
    return absl::OkStatus();
  }
  if (config.eval) {
    absl::PrintF("final test accuracy: %.4f\n", accuracy);
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

absl::Status Run(WorkerConfig config, SteadyClock::time_point start,
                 std::shared_ptr<Cancellation> cancellation) {
  // Data first: a bad --data_dir fails before the server sees this worker.
  WEIGHTD_ASSIGN_OR_RETURN(const Dataset all,
                           LoadFashionMnist(config.data_dir, Split::kTrain));
  Dataset test;
  if (config.eval) {
    WEIGHTD_ASSIGN_OR_RETURN(test, LoadTestSet(config));
  }
  WEIGHTD_ASSIGN_OR_RETURN(std::unique_ptr<Mlp> model,
                           Mlp::Create({.inputs = all.pixels(),
                                        .hidden = config.hidden,
                                        .classes = config.classes,
                                        .seed = config.seed}));

  // Tensors() order: hidden w, hidden b, head w, head b.
  std::vector<TensorRef> model_tensors =
      model->Tensors("hidden", absl::StrCat(config.task, "/head"));
  if (!config.share_head) model_tensors.resize(2);
  for (TensorRef& tensor : model_tensors) tensor.policy = config.policy;
  std::vector<TensorRef> shared = model_tensors;
  const std::string bookkeeping_policy = BookkeepingPolicy(config.policy);
  float train_loss = 0;
  shared.push_back({absl::StrCat("metrics/", config.task, "/train_loss"),
                    {1},
                    absl::MakeSpan(&train_loss, 1),
                    bookkeeping_policy});

  // First in every push: a chunk of it applied twice shows.
  std::vector<float> counts(kCountsElements);
  if (config.check_counts && !config.standalone) {
    shared.insert(shared.begin(), {"checks/counts",
                                   {static_cast<std::int64_t>(counts.size())},
                                   absl::MakeSpan(counts),
                                   bookkeeping_policy});
  }
  const std::string prefix = absl::StrCat("weightd_worker ", config.worker_id);
  if (config.standalone) {
    WEIGHTD_ASSIGN_OR_RETURN(const Dataset train,
                             TrainShard(config, all, prefix));
    return TrainRounds(config, train, test, model.get(), shared, model_tensors,
                       &train_loss, nullptr, nullptr, cancellation.get(),
                       start);
  }
  ClientOptions options{.address = config.server,
                        .worker_id = config.worker_id,
                        .connect_timeout = config.connect_timeout,
                        .wire_format = config.wire_format,
                        .split_bytes = config.split_bytes,
                        .cancellation = cancellation,
                        .log =
                            [prefix](absl::string_view line) {
                              absl::FPrintF(stderr, "%s: %s\n", prefix, line);
                            },
                        .tls = TlsOptionsFromFlags(),
                        .token = config.token};
  absl::StatusOr<std::unique_ptr<Client>> connected = Client::Connect(options);
  if (absl::IsCancelled(connected.status()) && Stopping()) {
    absl::FPrintF(stderr, "%s: stopping on a signal before connecting\n",
                  prefix);
    return absl::OkStatus();
  }
  WEIGHTD_RETURN_IF_ERROR(connected.status());
  std::unique_ptr<Client> client = std::move(*connected);
  absl::FPrintF(stderr, "%s: connected to %s\n", prefix,
                absl::StrJoin(client->servers(), ","));
  absl::Status status = client->Join(shared);
  // The start barrier: the first round then averages every worker. Workers
  // beyond --workers pass it as soon as the first --workers were released.
  // A worker joining a job already under way (the shared layer is past
  // version 0: restarted, or added by a scale-up) does not wait for it.
  const bool under_way = status.ok() && *client->Version("hidden/w") > 0;
  if (status.ok() && config.start_barrier && !under_way) {
    absl::FPrintF(stderr, "%s: waiting at barrier start for %d workers\n",
                  prefix, config.workers);
    std::uint32_t arrival = 0;
    status = client->Barrier("start", config.workers, &arrival,
                             config.barrier_timeout);
    if (status.ok() && config.rank == -1) {
      config.rank = static_cast<int>(arrival % config.workers);
    }
  }
  if (status.ok() && config.rank == -1) {
    // Joined late: any shard will do; the worker id spreads them.
    config.rank = static_cast<int>(StableNameHash(config.worker_id) %
                                   static_cast<std::uint64_t>(config.workers));
  }
  if (status.ok()) {
    absl::FPrintF(stderr, "%s: training on data shard %d of %d\n", prefix,
                  config.rank, config.workers);
    absl::StatusOr<Dataset> train = TrainShard(config, all, prefix);
    status = train.status();
    if (status.ok()) {
      status =
          TrainRounds(config, *train, test, model.get(), shared, model_tensors,
                      &train_loss, config.check_counts ? &counts : nullptr,
                      client.get(), cancellation.get(), start);
    }
  }
  if (absl::IsCancelled(status) && Stopping()) {
    absl::FPrintF(stderr, "%s: stopping on a signal; leaving the job\n",
                  prefix);
    status = absl::OkStatus();
  }
  // Leave even after an error, so that the server stops waiting for this
  // worker in sync rounds; the first error wins.
  absl::Status left = client->Leave();
  if (!left.ok() && Stopping()) {
    // Asked to stop: a server that cannot be reached drops this worker when
    // its lease runs out; that is no failure of the worker.
    absl::FPrintF(stderr,
                  "%s: could not leave (%s); the server drops this worker "
                  "when its lease expires\n",
                  prefix, left.ToString());
    left = absl::OkStatus();
  }
  status.Update(left);
  return status;
}

}  // namespace
}  // namespace weightd::examples

int main(int argc, char** argv) {
  const auto start = std::chrono::steady_clock::now();
  // A bad value, flag or WEIGHTD_* variable exits 2 with one line
  // (common/startup.h); ConfigFromFlags reads WEIGHTD_SERVERS.
  const std::vector<char*> positional = weightd::StartProgram(
      {"weightd_worker",
       "Trains a Fashion-MNIST MLP on one data shard, averaging its weights "
       "with other workers through a weightd server.",
       "examples/train_worker.cc",
       {},
       {weightd::kCredentialFlagsFile}},
      argc, argv);
  if (positional.size() > 1) {
    std::cerr << "weightd_worker: unexpected argument " << positional[1]
              << "\n";
    return weightd::kExitBadConfiguration;
  }
  absl::StatusOr<weightd::examples::WorkerConfig> config =
      weightd::examples::ConfigFromFlags();
  if (!config.ok()) {  // A configuration that cannot work: one line, exit 2.
    std::cerr << "weightd_worker: " << config.status().message() << "\n";
    return weightd::kExitBadConfiguration;
  }
  absl::Status status;
  // SIGINT and SIGTERM are taken by a thread of their own, which cancels
  // whatever the worker waits for; a second signal ends it at once.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto cancellation = std::make_shared<weightd::Cancellation>();
  std::thread([signals, cancellation] {
    for (int n = 0;; ++n) {
      int signal_number = 0;
      if (sigwait(&signals, &signal_number) != 0) return;
      if (n > 0) std::_Exit(128 + signal_number);
      weightd::examples::g_stop_signal = signal_number;
      cancellation->Cancel();
    }
  }).detach();
  status = weightd::examples::Run(*config, start, cancellation);
  if (!status.ok()) {
    std::cerr << "weightd_worker: " << status << "\n";
    return 1;
  }
  return 0;
}
