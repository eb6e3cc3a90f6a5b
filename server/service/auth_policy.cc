#include "server/service/auth_policy.h"

#include <google/protobuf/util/json_util.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/names.h"
#include "weightd/v1/auth_policy.pb.h"

namespace weightd::service {
namespace {

absl::Status Bad(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

bool HexToBytes(absl::string_view hex, unsigned char out[32]) {
  if (hex.size() != 64) return false;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (int i = 0; i < 32; ++i) {
    const int hi = digit(hex[2 * i]), lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<unsigned char>(hi * 16 + lo);
  }
  return true;
}

absl::Status Denied(const Principal& p, absl::string_view what) {
  return absl::PermissionDeniedError(
      absl::StrCat("principal ", p.name, " (", RoleName(p.role), ") ", what));
}

bool AnyMatches(const std::vector<std::string>& patterns,
                absl::string_view text) {
  for (const std::string& p : patterns) {
    if (PatternMatches(p, text)) return true;
  }
  return false;
}

}  // namespace

absl::string_view RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kJoin:
      return "Join";
    case Rpc::kPush:
      return "Push";
    case Rpc::kPull:
      return "Pull";
    case Rpc::kPushPull:
      return "PushPull";
    case Rpc::kLeave:
      return "Leave";
    case Rpc::kHeartbeat:
      return "Heartbeat";
    case Rpc::kBarrier:
      return "Barrier";
    case Rpc::kGetStatus:
      return "GetStatus";
    case Rpc::kTakeSnapshot:
      return "TakeSnapshot";
    case Rpc::kGetHistory:
      return "GetHistory";
    case Rpc::kDropTensor:
      return "DropTensor";
    case Rpc::kAttachSegment:
      return "AttachSegment";
    case Rpc::kPushSegment:
      return "PushSegment";
    case Rpc::kPullSegment:
      return "PullSegment";
  }
  return "?";
}

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kWorker:
      return "worker";
    case Role::kReader:
      return "reader";
    case Role::kAdmin:
      return "admin";
  }
  return "?";
}

bool RoleAllows(Role role, Rpc rpc) {
  switch (role) {
    case Role::kAdmin:
      return true;
    case Role::kReader:
      return rpc == Rpc::kPull || rpc == Rpc::kGetStatus ||
             rpc == Rpc::kGetHistory;
    case Role::kWorker:
      // GetStatus too: a client learns the chunk size from it before Join.
      return rpc != Rpc::kTakeSnapshot && rpc != Rpc::kDropTensor;
  }
  return false;
}

absl::StatusOr<std::shared_ptr<const AuthPolicy>> AuthPolicy::Parse(
    absl::string_view json, absl::string_view source) {
  v1::AuthPolicy file;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto parsed = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &file, options);
  if (!parsed.ok()) {
    return Bad(source, absl::StrCat("not a policy (JSON of "
                                    "proto/weightd/v1/auth_policy.proto): ",
                                    std::string(parsed.message())));
  }
  std::shared_ptr<AuthPolicy> policy(new AuthPolicy());
  absl::flat_hash_set<std::string> names, certificates, tokens;
  for (const v1::Principal& p : file.principals()) {
    const std::string at = absl::StrCat("principal \"", p.name(), "\"");
    if (absl::Status s = ValidateName("principal name", p.name()); !s.ok()) {
      return Bad(source, s.message());
    }
    if (!names.insert(p.name()).second) {
      return Bad(source, absl::StrCat(at, " is named twice"));
    }
    Principal out{p.name(),
                  Role::kWorker,
                  {p.tensors().begin(), p.tensors().end()},
                  {p.worker_ids().begin(), p.worker_ids().end()}};
    switch (p.role()) {
      case v1::WORKER:
        out.role = Role::kWorker;
        break;
      case v1::READER:
        out.role = Role::kReader;
        break;
      case v1::ADMIN:
        out.role = Role::kAdmin;
        break;
      default:
        return Bad(source, absl::StrCat(at,
                                        " needs a role: WORKER, READER "
                                        "or ADMIN"));
    }
    if (p.certificate_names().empty() && p.token_sha256().empty()) {
      return Bad(source, absl::StrCat(at,
                                      " has no credential: give "
                                      "certificate_names or "
                                      "token_sha256"));
    }
    if (out.role == Role::kWorker && out.worker_ids.empty()) {
      return Bad(source, absl::StrCat(at,
                                      " is a worker without worker_ids "
                                      "(patterns, e.g. \"trainer-*\")"));
    }
    if (out.role != Role::kWorker && !out.worker_ids.empty()) {
      return Bad(source, absl::StrCat(at, " has worker_ids but is no worker"));
    }
    if (out.role != Role::kAdmin && out.tensors.empty()) {
      return Bad(source, absl::StrCat(at,
                                      " has no tensors (patterns, e.g. "
                                      "\"encoder/*\", or \"*\" for all)"));
    }
    if (out.role == Role::kAdmin && !out.tensors.empty()) {
      return Bad(source, absl::StrCat(at,
                                      " is an admin, which uses every "
                                      "tensor: leave out tensors"));
    }
    const std::size_t index = policy->principals_.size();
    for (const std::string& c : p.certificate_names()) {
      if (c.empty() || !certificates.insert(c).second) {
        return Bad(source, absl::StrCat(at, ": certificate name \"", c,
                                        "\" is empty or given twice"));
      }
      policy->certificate_names_.emplace_back(c, index);
    }
    for (const std::string& hex : p.token_sha256()) {
      Token token;
      token.principal = index;
      if (!HexToBytes(hex, token.sha256)) {
        return Bad(source, absl::StrCat(at,
                                        ": a token_sha256 is not 64 hex digits "
                                        "(printf %s \"$TOKEN\" | sha256sum)"));
      }
      if (!tokens.insert(absl::AsciiStrToLower(hex)).second) {
        return Bad(source, absl::StrCat(at, ": a token hash is given twice"));
      }
      policy->tokens_.push_back(token);
    }
    policy->principals_.push_back(std::move(out));
  }
  if (policy->principals_.empty()) {
    return Bad(source, "names no principal: every call would be refused");
  }
  return policy;
}

absl::StatusOr<std::shared_ptr<const AuthPolicy>> AuthPolicy::Load(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot be read: ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  return Parse(text.str(), path);
}

absl::StatusOr<const Principal*> AuthPolicy::Identify(
    std::optional<absl::string_view> authorization,
    absl::Span<const std::string> certificate_names) const {
  if (authorization.has_value()) {
    absl::string_view token = *authorization;
    if (!absl::ConsumePrefix(&token, "Bearer ") || token.empty()) {
      return absl::UnauthenticatedError(
          "the authorization header must be \"Bearer <token>\"");
    }
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(),
           digest);
    // Every hash is compared, in constant time each: the time taken does
    // not tell which principal, or how much of a hash, matched.
    const Principal* found = nullptr;
    for (const Token& t : tokens_) {
      if (CRYPTO_memcmp(t.sha256, digest, sizeof(digest)) == 0) {
        found = &principals_[t.principal];
      }
    }
    if (found == nullptr) {
      return absl::UnauthenticatedError(
          "the bearer token is no principal's of the --auth_policy");
    }
    return found;
  }
  for (const std::string& name : certificate_names) {
    for (const auto& [known, index] : certificate_names_) {
      if (known == name) return &principals_[index];
    }
  }
  if (!certificate_names.empty()) {
    return absl::UnauthenticatedError(absl::StrCat(
        "the client certificate (", absl::StrJoin(certificate_names, ", "),
        ") is no principal's of the --auth_policy"));
  }
  return absl::UnauthenticatedError(
      "no credentials: present a client certificate (mutual TLS) or a "
      "bearer token (\"authorization: Bearer <token>\"; weightd's clients: "
      "--token_file or WEIGHTD_TOKEN_FILE)");
}

const std::string& Permissions::principal_name() const {
  static const std::string* const kNone = new std::string();
  return principal_ == nullptr ? *kNone : principal_->name;
}

absl::Status Permissions::MayJoinAs(absl::string_view worker_id) const {
  if (admin()) return absl::OkStatus();
  if (AnyMatches(principal_->worker_ids, worker_id)) return absl::OkStatus();
  return Denied(
      *principal_,
      absl::StrCat("may not join as worker ", worker_id, " (its worker_ids: ",
                   absl::StrJoin(principal_->worker_ids, ", "), ")"));
}

absl::Status Permissions::MayUseTensor(absl::string_view name) const {
  if (admin()) return absl::OkStatus();
  if (AnyMatches(principal_->tensors, name)) return absl::OkStatus();
  return Denied(*principal_,
                absl::StrCat("may not use tensor ", name, " (its tensors: ",
                             absl::StrJoin(principal_->tensors, ", "), ")"));
}

absl::Status Permissions::MayUseLease(std::uint64_t lease_id,
                                      absl::string_view owner,
                                      absl::string_view worker_id) const {
  if (admin()) return absl::OkStatus();
  if (owner.empty() ? AnyMatches(principal_->worker_ids, worker_id)
                    : owner == principal_->name) {
    return absl::OkStatus();
  }
  return Denied(
      *principal_,
      absl::StrCat("may not use lease ", lease_id, " of worker ", worker_id,
                   ": it belongs to ", owner.empty() ? "no principal" : owner));
}

}  // namespace weightd::service
