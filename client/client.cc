#include "client/client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "client/buffer_checks.h"
#include "client/credentials.h"
#include "client/shard_client.h"
#include "common/status_macros.h"

namespace weightd {
namespace {

// The addresses a "host:port" (or "dns:///host:port") target resolves to,
// as "ip:port" targets, per address family, sorted.
struct Resolved {
  // Nothing to wait for: an IP address, or not a host name at all (e.g.
  // "unix:/path").
  bool fixed = true;
  std::string host;  // The name resolved (its certificate's name under TLS).
  std::vector<std::string> ipv4;
  std::vector<std::string> ipv6;
};

Resolved ResolveAll(absl::string_view target) {
  Resolved out;
  const bool dns = absl::ConsumePrefix(&target, "dns:///");
  const std::size_t colon = target.rfind(':');
  if (colon == absl::string_view::npos ||
      (!dns && absl::StrContains(target.substr(0, colon), ":") &&
       !absl::StartsWith(target, "["))) {
    return out;  // "unix:/path", "ipv4:...": not a name.
  }
  std::string host(target.substr(0, colon));
  const std::string port(target.substr(colon + 1));
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* found = nullptr;
  out.host = host;
  out.fixed = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) == 0;
  if (found != nullptr) ::freeaddrinfo(found);
  found = nullptr;
  hints.ai_flags = 0;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0)
    return out;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char ip[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      ::inet_ntop(AF_INET,
                  &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, ip,
                  sizeof(ip));
      out.ipv4.push_back(absl::StrCat(ip, ":", port));
    } else if (a->ai_family == AF_INET6) {
      ::inet_ntop(AF_INET6,
                  &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, ip,
                  sizeof(ip));
      out.ipv6.push_back(absl::StrCat("[", ip, "]:", port));
    }
  }
  ::freeaddrinfo(found);
  for (auto* v : {&out.ipv4, &out.ipv6}) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
  }
  return out;
}

// The addresses of one family that number exactly `count` (IPv4 first: a
// dual-stack name lists every shard once per family); empty if neither.
std::vector<std::string> OneFamily(const Resolved& r, std::size_t count) {
  if (r.ipv4.size() == count) return r.ipv4;
  if (r.ipv6.size() == count) return r.ipv6;
  return {};
}

// Identifies this client process to the servers (v1::JoinHeader.instance).
std::uint64_t NewInstance() {
  absl::BitGen bitgen;
  std::uint64_t instance = 0;
  while (instance == 0) instance = absl::Uniform<std::uint64_t>(bitgen);
  return instance;
}

absl::StatusOr<std::vector<std::unique_ptr<ShardClient>>> ConnectAll(
    const ClientOptions& options, const std::vector<std::string>& targets,
    std::uint64_t instance) {
  std::vector<std::unique_ptr<ShardClient>> shards;
  std::vector<ShardLayout> layouts;
  for (const std::string& target : targets) {
    WEIGHTD_ASSIGN_OR_RETURN(std::unique_ptr<ShardClient> shard,
                             ShardClient::Connect(options, target, instance));
    layouts.push_back(shard->layout());
    shards.push_back(std::move(shard));
  }
  WEIGHTD_ASSIGN_OR_RETURN(std::vector<std::size_t> order,
                           OrderShards(targets, layouts));
  std::vector<std::unique_ptr<ShardClient>> ordered;
  for (std::size_t i : order) ordered.push_back(std::move(shards[i]));
  return ordered;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const ClientOptions& options) {
  WEIGHTD_ASSIGN_OR_RETURN(std::vector<std::string> targets,
                           SplitTargets(options.address));
  std::vector<std::unique_ptr<ShardClient>> shards;
  const std::uint64_t instance = NewInstance();
  if (targets.size() > 1) {
    WEIGHTD_ASSIGN_OR_RETURN(shards, ConnectAll(options, targets, instance));
    return absl::WrapUnique(new Client(options, std::move(shards)));
  }
  WEIGHTD_ASSIGN_OR_RETURN(std::unique_ptr<ShardClient> first,
                           ShardClient::Connect(options, targets[0], instance));
  const ShardLayout layout = first->layout();
  if (layout.count == 1) {
    shards.push_back(std::move(first));
    return absl::WrapUnique(new Client(options, std::move(shards)));
  }
  // One name for every shard (a Kubernetes headless service): wait until it
  // resolves to as many addresses as there are shards (a shard that is not
  // ready yet is missing from the answer).
  first.reset();
  const absl::Time give_up = absl::Now() + options.connect_timeout;
  Resolved found = ResolveAll(targets[0]);
  std::vector<std::string> resolved = OneFamily(found, layout.count);
  while (!found.fixed && resolved.empty() && absl::Now() < give_up) {
    absl::SleepFor(absl::Seconds(1));
    found = ResolveAll(targets[0]);
    resolved = OneFamily(found, layout.count);
  }
  if (resolved.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "weightd at ", targets[0], " is shard ", layout.index, " of ",
        layout.count, ", but this worker was given 1 server(s)",
        found.fixed
            ? ""
            : absl::StrCat(" (a name that resolves to ", found.ipv4.size(),
                           " IPv4 and ", found.ipv6.size(),
                           " IPv6 address(es) after ",
                           absl::FormatDuration(options.connect_timeout), ")"),
        ": give every shard's address, or a name that resolves to all of "
        "them"));
  }
  // The shards are dialled by address; under TLS their certificates are
  // checked against the name they were found by.
  ClientOptions by_address = options;
  if (by_address.tls.server_name.empty()) {
    by_address.tls.server_name = UsesTls(options.tls) ? found.host : "";
  }
  WEIGHTD_ASSIGN_OR_RETURN(shards, ConnectAll(by_address, resolved, instance));
  return absl::WrapUnique(new Client(options, std::move(shards)));
}

Client::Client(ClientOptions options,
               std::vector<std::unique_ptr<ShardClient>> shards)
    : options_(std::move(options)), shards_(std::move(shards)) {}

Client::~Client() = default;

std::vector<std::string> Client::servers() const {
  std::vector<std::string> out;
  for (const auto& s : shards_) out.push_back(s->address());
  return out;
}

absl::Status Client::OnShards(
    const std::vector<std::vector<TensorRef>>& lists, bool all,
    absl::FunctionRef<absl::Status(std::size_t shard,
                                   absl::Span<const TensorRef>)>
        call,
    std::vector<absl::Status>* out) {
  std::vector<std::size_t> busy;
  for (std::size_t i = 0; i < shards_.size(); ++i) {
    if (all || !lists[i].empty()) busy.push_back(i);
  }
  std::vector<absl::Status> results(shards_.size());
  auto run = [&](std::size_t i) { results[i] = call(i, lists[i]); };
  // The first shard's call runs on this thread, the others beside it.
  std::vector<std::thread> threads;
  for (std::size_t k = 1; k < busy.size(); ++k)
    threads.emplace_back(run, busy[k]);
  if (!busy.empty()) run(busy[0]);
  for (std::thread& t : threads) t.join();
  if (out != nullptr) *out = results;
  for (std::size_t i : busy) {
    if (results[i].ok()) continue;
    if (shards_.size() == 1) return results[i];
    return absl::Status(results[i].code(),
                        absl::StrCat("shard ", i, " (", shards_[i]->address(),
                                     "): ", results[i].message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<TensorRef>>> Client::Split(
    const absl::flat_hash_map<std::string, std::vector<Placement>>& placements,
    absl::Span<const TensorRef> tensors) const {
  std::vector<std::vector<TensorRef>> lists(shards_.size());
  for (const TensorRef& t : tensors) {
    auto it = placements.find(t.name);
    if (it == placements.end()) {
      return absl::NotFoundError(
          absl::StrCat("tensor ", t.name, " was not declared in Join"));
    }
    const Placement& last = it->second.back();
    WEIGHTD_RETURN_IF_ERROR(CheckBufferHolds(t, last.first + last.elements));
    for (const Placement& p : it->second) {
      lists[p.shard].push_back(TensorRef{
          t.name, p.shape, t.data.subspan(p.first, p.elements), t.policy});
    }
  }
  return lists;
}

absl::Status Client::Join(absl::Span<const TensorRef> tensors) {
  if (tensors.empty()) return absl::InvalidArgumentError("no tensors given");
  absl::flat_hash_map<std::string, std::vector<Placement>> placements;
  for (const TensorRef& t : tensors) {
    WEIGHTD_RETURN_IF_ERROR(CheckBufferFitsShape(t));
    placements[t.name] =
        PlaceTensor(t.name, t.shape, shards_.size(), options_.split_bytes);
  }
  WEIGHTD_ASSIGN_OR_RETURN(std::vector<std::vector<TensorRef>> lists,
                           Split(placements, tensors));
  // Every shard, even one holding none of these tensors: barriers run on
  // shard 0, and a worker needs a lease there.
  std::vector<absl::Status> results;
  // Each part tells its shard the whole tensor's shape, so that a worker
  // declaring another one is refused even where the parts look alike.
  std::vector<std::vector<std::vector<std::int64_t>>> wholes(shards_.size());
  for (const TensorRef& t : tensors) {
    const std::vector<Placement>& parts = placements.at(t.name);
    for (const Placement& p : parts) {
      wholes[p.shard].push_back(parts.size() > 1 ? t.shape
                                                 : std::vector<std::int64_t>{});
    }
  }
  absl::Status joined = OnShards(
      lists, /*all=*/true,
      [&](std::size_t i, absl::Span<const TensorRef> l) {
        return shards_[i]->Join(l, wholes[i]);
      },
      &results);
  if (!joined.ok()) {
    // Not joined anywhere rather than on some shards: a shard that took
    // the Join would wait for this worker in every round. (If every shard
    // refused, nothing changed: an earlier membership stays.)
    bool left = false;
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      if (!results[i].ok()) continue;
      shards_[i]->Leave().IgnoreError();
      left = true;
    }
    if (left) placements_.clear();
    return joined;
  }
  placements_ = std::move(placements);
  return absl::OkStatus();
}

absl::Status Client::Push(absl::Span<const TensorRef> tensors,
                          const PushOptions& options) {
  if (tensors.empty()) return absl::InvalidArgumentError("no tensors given");
  WEIGHTD_ASSIGN_OR_RETURN(auto lists, Split(tensors));
  return OnShards(lists, false,
                  [&](std::size_t i, absl::Span<const TensorRef> l) {
                    return shards_[i]->Push(l, options);
                  });
}

absl::Status Client::Pull(absl::Span<const TensorRef> tensors) {
  if (tensors.empty()) return absl::InvalidArgumentError("no tensors given");
  WEIGHTD_ASSIGN_OR_RETURN(auto lists, Split(tensors));
  return OnShards(lists, false,
                  [&](std::size_t i, absl::Span<const TensorRef> l) {
                    return shards_[i]->Pull(l);
                  });
}

absl::Status Client::PushPull(absl::Span<const TensorRef> tensors,
                              const PushOptions& options) {
  if (tensors.empty()) return absl::InvalidArgumentError("no tensors given");
  WEIGHTD_ASSIGN_OR_RETURN(auto lists, Split(tensors));
  return OnShards(lists, false,
                  [&](std::size_t i, absl::Span<const TensorRef> l) {
                    return shards_[i]->PushPull(l, options);
                  });
}

absl::Status Client::Barrier(absl::string_view name, int count,
                             std::uint32_t* arrival, absl::Duration timeout) {
  return shards_[0]->Barrier(name, count, arrival, timeout);
}

absl::Status Client::Leave() {
  std::vector<std::vector<TensorRef>> none(shards_.size());
  placements_.clear();  // Whatever a shard answers: Join again after Leave.
  return OnShards(none, /*all=*/true,
                  [&](std::size_t i, absl::Span<const TensorRef>) {
                    return shards_[i]->Leave();
                  });
}

absl::StatusOr<ServerStatus> Client::GetStatus() {
  ServerStatus sum;
  for (const auto& shard : shards_) {
    WEIGHTD_ASSIGN_OR_RETURN(ServerStatus s, shard->GetStatus());
    sum.bytes_received += s.bytes_received;
    sum.bytes_sent += s.bytes_sent;
    sum.rounds_closed += s.rounds_closed;
  }
  return sum;
}

absl::StatusOr<std::uint64_t> Client::Version(const std::string& name) const {
  auto it = placements_.find(name);
  if (it == placements_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor ", name, " was not declared in Join"));
  }
  return shards_[it->second.front().shard]->Version(name);
}

absl::StatusOr<SharedBuffer> Client::SharedBufferFor(const std::string& name) {
  auto it = placements_.find(name);
  if (it == placements_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor ", name, " was not declared in Join"));
  }
  if (it->second.size() != 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tensor ", name, " is split over ", it->second.size(),
        " shards, whose parts live in different segments; it has no shared "
        "buffer"));
  }
  return shards_[it->second.front().shard]->SharedBufferFor(name);
}

bool Client::lease_lost() const {
  return std::any_of(shards_.begin(), shards_.end(),
                     [](const auto& s) { return s->lease_lost(); });
}

ClientStats Client::stats() const {
  ClientStats sum;
  for (const auto& shard : shards_) {
    sum.bytes_pushed += shard->stats().bytes_pushed;
    sum.bytes_pulled += shard->stats().bytes_pulled;
    sum.rounds_missed += shard->stats().rounds_missed;
    sum.retries += shard->stats().retries;
  }
  return sum;
}

}  // namespace weightd
