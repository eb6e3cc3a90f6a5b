// weightctl export and import: the shared weights to and from safetensors
// and .npz files (tools/tensor_files.h).
//
// Export reads from every server without joining: GetStatus lists the
// tensors (a tensor split by rows over shards shows up on each as one part,
// with its whole shape beside it), and a Pull without a lease streams each
// part. A Join would make the exporter a participant, and a sync job's
// rounds would wait for it.
//
// Import changes nothing until every tensor of the file is known to be
// acceptable: valid names, shapes and values, and no tensor on the servers
// of the same name and another shape. Then one Join, through weightd::Client
// (which places tensors on shards as workers do), creates the new tensors
// from the file's values, and a Leave ends the membership at once.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "client/client.h"
#include "client/credentials.h"
#include "client/shard_plan.h"
#include "common/names.h"
#include "tools/ctl.h"
#include "tools/tensor_files.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd::ctl {
namespace {

using nlohmann::json;
using tensor_files::NamedTensor;
using tensor_files::TensorFile;
using tensor_files::TensorFileFormat;

// Pulled chunks are up to the server's chunk_bytes (at most 16 MiB,
// common/wire.h): the client library's receive limit, above gRPC's 4 MiB.
constexpr int kMaxReceiveBytes = 64 << 20;

std::string ShapeString(const std::vector<std::int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

std::uint64_t Elements(const std::vector<std::int64_t>& shape) {
  std::uint64_t n = 1;
  for (std::int64_t d : shape) n *= static_cast<std::uint64_t>(d);
  return n;
}

// An error of weightd::Client (which speaks absl::Status): exit codes as
// Failed's for a gRPC status.
int ClientFailed(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "weightctl: %s: %s: %s\n", what.c_str(),
               absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kUnavailable ? kExitUsage
                                                         : kExitRefused;
}

// A worker id naming the command, the host and the process: distinct from
// every worker's, and from another weightctl's running at once.
std::string ToolWorkerId(absl::string_view command) {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  std::string h = host[0] != '\0' ? host : "host";
  for (char& c : h) {
    const bool allowed = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                         (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                         c == ':' || c == '/' || c == '-';
    if (!allowed) c = '-';
  }
  return absl::StrCat("weightctl-", command, "-", h.substr(0, 200), "-",
                      getpid());
}

// One part of a tensor on one server (the whole tensor where not split).
struct Part {
  std::size_t server = 0;  // Index into Context::targets.
  std::vector<std::int64_t> shape;
  std::uint64_t version = 0;
};

// A tensor as the servers hold it, whole.
struct Listed {
  std::string name;
  std::vector<std::int64_t> shape;  // Of the whole tensor.
  bool split = false;               // Held in row parts by several shards.
  std::vector<Part> parts;          // As the servers listed them.
};

// The tensors of every server, whole, by name (RowParts checks that the
// parts of a split tensor fit together).
std::map<std::string, Listed> ListTensors(
    const std::vector<v1::GetStatusResponse>& responses) {
  std::map<std::string, Listed> tensors;
  for (std::size_t i = 0; i < responses.size(); ++i) {
    for (const v1::TensorInfo& t : responses[i].tensors()) {
      const bool part = !t.whole_shape().empty();
      const auto& whole = part ? t.whole_shape() : t.shape();
      Listed& l = tensors[t.name()];
      if (l.name.empty()) {
        l.name = t.name();
        l.shape.assign(whole.begin(), whole.end());
        l.split = part;
      }
      l.parts.push_back(
          Part{i, std::vector<std::int64_t>(t.shape().begin(), t.shape().end()),
               t.version()});
    }
  }
  return tensors;
}

// Where each row part of a split tensor is, in row order: the client's
// placement (client/shard_plan.h) with every tensor split, matched against
// the parts the servers reported (by their shard index). Servers that
// split with any --split_bytes agree with it: the threshold decides only
// whether a tensor is split, not how. FAILED_PRECONDITION if the parts do
// not form that layout.
absl::StatusOr<std::vector<std::pair<Part, Placement>>> RowParts(
    const Listed& tensor, const std::vector<v1::GetStatusResponse>& responses) {
  if (!tensor.split) {
    if (tensor.parts.size() != 1) {
      return absl::FailedPreconditionError(
          absl::StrCat("tensor ", tensor.name, " is held whole by ",
                       tensor.parts.size(), " servers"));
    }
    Placement whole{0, 0, Elements(tensor.shape), tensor.shape};
    return std::vector<std::pair<Part, Placement>>{{tensor.parts[0], whole}};
  }
  const std::uint32_t shards = std::max(responses[0].shard().count(), 1u);
  std::vector<std::pair<Part, Placement>> out;
  for (const Placement& p :
       PlaceTensor(tensor.name, tensor.shape, shards, /*split_bytes=*/0)) {
    const Part* found = nullptr;
    for (const Part& part : tensor.parts) {
      if (responses[part.server].shard().index() == p.shard) found = &part;
    }
    if (found == nullptr || found->shape != p.shape) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor ", tensor.name, " of shape ", ShapeString(tensor.shape),
          ": shard ", p.shard, " should hold rows of shape ",
          ShapeString(p.shape), " but holds ",
          found == nullptr ? "none" : ShapeString(found->shape),
          " (are all shards in --server?)"));
    }
    out.emplace_back(*found, p);
  }
  if (out.size() != tensor.parts.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("tensor ", tensor.name, " has ", tensor.parts.size(),
                     " parts; its shape makes ", out.size()));
  }
  return out;
}

// The version of a tensor as the client reports it: of its first row part
// for a split tensor (the parts' rounds close independently).
std::uint64_t FirstPartVersion(
    const Listed& tensor, const std::vector<v1::GetStatusResponse>& responses) {
  absl::StatusOr<std::vector<std::pair<Part, Placement>>> parts =
      RowParts(tensor, responses);
  return parts.ok() ? parts->front().first.version : tensor.parts[0].version;
}

// Streams tensor `name`'s value on one server (`shape`, as that server
// holds it) into `out` (its elements), without a lease. Sets *version to
// the version streamed. Status of the call, or INTERNAL for a stream that
// breaks the protocol (docs/protocol.md: a header, then the chunks of the
// tensor in offset order).
grpc::Status PullPart(const std::shared_ptr<grpc::Channel>& channel,
                      const Context& context, const std::string& name,
                      const std::vector<std::int64_t>& shape, float* out,
                      std::uint64_t* version) {
  auto stub = v1::Weightd::NewStub(channel);
  grpc::ClientContext call;
  call.set_deadline(context.Deadline());
  v1::PullRequest request;
  v1::PulledTensor* wanted = request.add_tensors();
  wanted->set_name(name);
  request.set_format(v1::WIRE_FORMAT_FLOAT32);
  request.set_accept_batches(true);
  std::unique_ptr<grpc::ClientReader<v1::PullResponse>> reader =
      stub->Pull(&call, request);
  const std::uint64_t bytes = Elements(shape) * sizeof(float);
  std::uint64_t received = 0;
  bool header = false;
  std::string broken;
  // Copies one chunk after checking it continues the tensor where the last
  // one ended and stays within it.
  auto take = [&](const v1::TensorChunk& c) {
    const std::string& data = c.data();
    if (c.tensor_index() != 0 || c.offset() != received || data.empty() ||
        data.size() % sizeof(float) != 0 || data.size() > bytes - received) {
      broken = absl::StrCat("a chunk at offset ", c.offset(), " of ",
                            data.size(), " bytes where ", received, " of ",
                            bytes, " were received");
      return;
    }
    std::memcpy(reinterpret_cast<char*>(out) + received, data.data(),
                data.size());
    received += data.size();
  };
  v1::PullResponse message;
  while (broken.empty() && reader->Read(&message)) {
    switch (message.kind_case()) {
      case v1::PullResponse::kHeader: {
        const auto& tensors = message.header().tensors();
        if (header || tensors.size() != 1 ||
            std::vector<std::int64_t>(tensors[0].shape().begin(),
                                      tensors[0].shape().end()) != shape) {
          broken = "an unexpected header";
          break;
        }
        header = true;
        *version = tensors[0].version();
        break;
      }
      case v1::PullResponse::kChunk:
        if (!header) broken = "a chunk before the header";
        if (broken.empty()) take(message.chunk());
        break;
      case v1::PullResponse::kBatch:
        if (!header) broken = "a batch before the header";
        for (const v1::TensorChunk& c : message.batch().chunks()) {
          if (broken.empty()) take(c);
        }
        break;
      default:
        broken = "an empty message";
    }
  }
  if (!broken.empty()) {
    call.TryCancel();
    reader->Finish();
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        absl::StrCat("Pull of ", name, " streamed ", broken));
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) return status;
  if (!header || received != bytes) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        absl::StrCat("Pull of ", name, " ended after ",
                                     received, " of ", bytes, " bytes"));
  }
  return status;
}

// A non-finite value, where the tensor has one: the server refuses NaN and
// Inf in a Join, and a float64 beyond float32's range converts to Inf.
std::optional<std::size_t> NonFinite(const std::vector<float>& values) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return i;
  }
  return std::nullopt;
}

// FNV-1a over the bytes of `values`: tells, after the Join, whether a
// buffer still holds the file's values or got the server's.
std::uint64_t Fingerprint(const std::vector<float>& values) {
  std::uint64_t h = 1469598103934665603ull;
  const auto* p = reinterpret_cast<const unsigned char*>(values.data());
  for (std::size_t i = 0; i < values.size() * sizeof(float); ++i) {
    h = (h ^ p[i]) * 1099511628211ull;
  }
  return h;
}

}  // namespace

int Export(const Context& context) {
  if (context.out.empty()) {
    std::fprintf(stderr,
                 "weightctl: export: give the file to write: --out=FILE "
                 "(FILE.safetensors or FILE.npz)\n");
    return kExitUsage;
  }
  absl::StatusOr<TensorFileFormat> format =
      tensor_files::FormatFor(context.format, context.out);
  if (!format.ok()) return Failed("export", format.status());

  std::vector<v1::GetStatusResponse> responses;
  if (int code =
          StatusOfAll(context, /*tensors=*/true, /*workers=*/false, &responses);
      code != kExitOk)
    return code;
  std::map<std::string, Listed> listed = ListTensors(responses);

  // Every pattern must name something: a typo should not silently export
  // less than was asked for.
  std::vector<const Listed*> selected;
  for (const auto& [name, tensor] : listed) {
    bool wanted = context.args.empty();
    for (const std::string& p : context.args) wanted |= PatternMatches(p, name);
    if (wanted) selected.push_back(&tensor);
  }
  for (const std::string& p : context.args) {
    if (std::none_of(listed.begin(), listed.end(), [&](const auto& l) {
          return PatternMatches(p, l.first);
        })) {
      std::fprintf(stderr, "weightctl: export: no tensor matches %s\n",
                   p.c_str());
      return kExitRefused;
    }
  }
  if (selected.empty()) {
    std::fprintf(stderr, "weightctl: export: the servers hold no tensor\n");
    return kExitRefused;
  }

  // Channels of our own: a pulled chunk may exceed gRPC's default 4 MiB
  // receive limit, which the shared channels keep.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (const std::string& target : context.targets) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxReceiveBytes);
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        CreateChannel(context.tls, context.token, target, args);
    if (!channel.ok()) return Failed("connect", channel.status());
    channels.push_back(*std::move(channel));
  }

  std::vector<NamedTensor> tensors;
  std::vector<std::uint64_t> versions;
  for (const Listed* l : selected) {
    absl::StatusOr<std::vector<std::pair<Part, Placement>>> parts =
        RowParts(*l, responses);
    if (!parts.ok()) return Failed("export", parts.status());
    NamedTensor t;
    t.name = l->name;
    t.shape = l->shape;
    t.values.resize(Elements(l->shape));
    std::uint64_t version = 0;
    for (std::size_t k = 0; k < parts->size(); ++k) {
      const auto& [part, place] = (*parts)[k];
      std::uint64_t pulled = 0;
      const grpc::Status status =
          PullPart(channels[part.server], context, l->name, part.shape,
                   t.values.data() + place.first, &pulled);
      if (!status.ok()) {
        return Failed(context,
                      absl::StrCat("pull ", l->name, " from ",
                                   context.targets[part.server]),
                      status);
      }
      // The first part's, as the client reports a split tensor's version
      // (the parts' rounds close independently).
      if (k == 0) version = pulled;
    }
    versions.push_back(version);
    tensors.push_back(std::move(t));
  }

  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    metadata[absl::StrCat("weightd.version.", tensors[i].name)] =
        absl::StrCat(versions[i]);
  }
  const absl::Status written =
      *format == TensorFileFormat::kSafetensors
          ? tensor_files::WriteSafetensors(context.out, tensors, metadata)
          : tensor_files::WriteNpz(context.out, tensors);
  if (!written.ok()) return Failed("export", written);

  std::uint64_t total = 0;
  json list = json::array();
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "SHAPE", "VERSION", "BYTES"}};
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const std::uint64_t bytes = tensors[i].values.size() * sizeof(float);
    total += bytes;
    list.push_back({{"name", tensors[i].name},
                    {"shape", tensors[i].shape},
                    {"version", versions[i]},
                    {"bytes", bytes}});
    rows.push_back({tensors[i].name, ShapeString(tensors[i].shape),
                    absl::StrCat(versions[i]), absl::StrCat(bytes)});
  }
  const std::string format_name(tensor_files::FormatName(*format));
  if (context.json) {
    const json document = {{"file", context.out},
                           {"format", format_name},
                           {"tensors", list},
                           {"bytes", total}};
    std::printf("%s\n", document.dump(2).c_str());
    return kExitOk;
  }
  PrintTable(rows);
  std::printf("wrote %s (%s): %zu tensors, %llu bytes of values\n",
              context.out.c_str(), format_name.c_str(), tensors.size(),
              static_cast<unsigned long long>(total));
  return kExitOk;
}

int Import(const Context& context) {
  const std::string& path = context.args[0];
  absl::StatusOr<TensorFile> file = tensor_files::ReadTensorFile(path);
  if (!file.ok()) return Failed("import", file.status());
  std::vector<NamedTensor>& tensors = file->tensors;
  if (tensors.empty()) {
    std::fprintf(stderr, "weightctl: import: %s holds no tensor\n",
                 path.c_str());
    return kExitUsage;
  }

  // Every tensor as weightd will take it, or nothing: each problem is
  // listed before anything changes.
  std::vector<std::string> problems;
  std::vector<std::string> file_names;
  for (NamedTensor& t : tensors) {
    file_names.push_back(t.name);
    t.name = context.prefix + t.name;
    if (absl::Status s = ValidateName("tensor name", t.name); !s.ok()) {
      problems.push_back(std::string(s.message()));
      continue;
    }
    if (std::any_of(t.shape.begin(), t.shape.end(),
                    [](std::int64_t d) { return d < 1; })) {
      problems.push_back(absl::StrCat("tensor ", t.name, " has shape ",
                                      ShapeString(t.shape),
                                      ": weightd needs every dimension >= 1"));
      continue;
    }
    if (std::optional<std::size_t> at = NonFinite(t.values)) {
      problems.push_back(absl::StrCat(
          "tensor ", t.name, " has NaN or Inf (element ", *at,
          t.source_dtype == "F32"
              ? ""
              : absl::StrCat(", after conversion from ", t.source_dtype),
          "): weightd holds finite values only"));
    }
  }
  if (!problems.empty()) {
    for (const std::string& p : problems) {
      std::fprintf(stderr, "weightctl: import: %s\n", p.c_str());
    }
    std::fprintf(stderr, "weightctl: import: %s: nothing imported\n",
                 path.c_str());
    return kExitUsage;
  }

  std::vector<v1::GetStatusResponse> responses;
  if (int code =
          StatusOfAll(context, /*tensors=*/true, /*workers=*/false, &responses);
      code != kExitOk)
    return code;
  const std::map<std::string, Listed> existing = ListTensors(responses);
  // Per tensor of the file: the existing one of that name, if any.
  std::vector<const Listed*> found(tensors.size(), nullptr);
  bool conflict = false;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    auto it = existing.find(tensors[i].name);
    if (it == existing.end()) continue;
    found[i] = &it->second;
    if (it->second.shape != tensors[i].shape) {
      std::fprintf(stderr,
                   "weightctl: import: tensor %s exists with shape %s; the "
                   "file's is %s\n",
                   tensors[i].name.c_str(),
                   ShapeString(it->second.shape).c_str(),
                   ShapeString(tensors[i].shape).c_str());
      conflict = true;
    }
  }
  if (conflict) {
    std::fprintf(stderr,
                 "weightctl: import: %s: nothing imported (drop those "
                 "tensors first, or import under another --prefix)\n",
                 path.c_str());
    return kExitRefused;
  }

  std::vector<TensorRef> refs;
  std::vector<std::uint64_t> fingerprints;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (found[i] != nullptr) continue;
    refs.push_back(TensorRef{tensors[i].name, tensors[i].shape,
                             absl::MakeSpan(tensors[i].values)});
    fingerprints.push_back(Fingerprint(tensors[i].values));
  }
  // Tensors that another client created between the check and the Join:
  // the Join pulled their values into our buffers instead.
  std::map<std::string, bool> raced;
  if (!refs.empty()) {
    ClientOptions options;
    options.address = context.address;
    options.worker_id = ToolWorkerId("import");
    options.tls = context.tls;
    options.token = context.token;
    options.heartbeat = false;
    options.shared_memory = false;
    options.connect_timeout = context.timeout;
    options.call_timeout = context.timeout;
    options.retry_budget = context.timeout;
    options.log = [](absl::string_view line) {
      std::fprintf(stderr, "weightctl: import: %s\n",
                   std::string(line).c_str());
    };
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    if (!client.ok()) return ClientFailed("import: connect", client.status());
    const absl::Status joined = (*client)->Join(refs);
    // Leave in every case: a Join refused by some shards only holds a
    // membership on the others.
    const absl::Status left = (*client)->Leave();
    if (!joined.ok()) {
      const int code = ClientFailed("import: Join", joined);
      if ((*client)->servers().size() > 1) {
        std::fprintf(stderr,
                     "weightctl: import: shards that accepted the Join "
                     "created their tensors: see weightctl tensors\n");
      }
      return code;
    }
    if (!left.ok()) ClientFailed("import: Leave", left);
    for (std::size_t j = 0; j < refs.size(); ++j) {
      const std::vector<float> now(refs[j].data.begin(), refs[j].data.end());
      raced[refs[j].name] = Fingerprint(now) != fingerprints[j];
    }
  }

  json list = json::array();
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "SHAPE", "FROM", "RESULT"}};
  int created = 0, kept = 0, converted = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const NamedTensor& t = tensors[i];
    std::string result, action;
    json entry = {{"name", t.name},
                  {"file_name", file_names[i]},
                  {"shape", t.shape},
                  {"dtype", t.source_dtype}};
    if (found[i] != nullptr) {
      const std::uint64_t version = FirstPartVersion(*found[i], responses);
      action = "kept";
      result = absl::StrCat("exists at version ", version,
                            ", kept (drop it first to replace it)");
      entry["version"] = version;
      ++kept;
    } else if (raced[t.name]) {
      action = "kept";
      result =
          "created meanwhile by another client, kept (drop it first to "
          "replace it)";
      ++kept;
    } else {
      action = "created";
      result = "created";
      ++created;
      if (t.source_dtype != "F32") {
        result += absl::StrCat(" (converted from ", t.source_dtype, ")");
        ++converted;
      }
    }
    entry["action"] = action;
    entry["converted_from"] =
        t.source_dtype == "F32" ? json(nullptr) : json(t.source_dtype);
    list.push_back(entry);
    rows.push_back({t.name, ShapeString(t.shape), t.source_dtype, result});
  }
  const std::string format_name(tensor_files::FormatName(file->format));
  if (context.json) {
    const json document = {{"file", path},    {"format", format_name},
                           {"tensors", list}, {"created", created},
                           {"kept", kept},    {"converted", converted}};
    std::printf("%s\n", document.dump(2).c_str());
    return kExitOk;
  }
  PrintTable(rows);
  std::printf(
      "imported %s (%s): %d created (%d converted to float32), %d "
      "kept\n",
      path.c_str(), format_name.c_str(), created, converted, kept);
  return kExitOk;
}

}  // namespace weightd::ctl
