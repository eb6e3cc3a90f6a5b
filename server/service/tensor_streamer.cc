#include "server/service/tensor_streamer.h"

#include <utility>

#include "common/chunk_codec.h"

namespace weightd::service {
namespace {

grpc::ByteBuffer HeaderOf(const std::vector<std::string>& names,
                          const std::vector<core::PublishedTensor>& published) {
  v1::PullResponse response;
  v1::PullHeader* header = response.mutable_header();
  for (std::size_t i = 0; i < published.size(); ++i) {
    v1::TensorInfo* info = header->add_tensors();
    info->set_name(names[i]);
    for (std::int64_t d : published[i].shape) info->add_shape(d);
    info->set_version(published[i].version);
  }
  return ToBytes(response);
}

std::vector<OutgoingTensor> Outgoing(
    const std::vector<core::PublishedTensor>& published, WireFormat format) {
  std::vector<OutgoingTensor> out;
  out.reserve(published.size());
  for (const core::PublishedTensor& s : published) {
    if (format == WireFormat::kFloat32) {
      out.push_back(
          OutgoingTensor::Shared(reinterpret_cast<const char*>(s.value->data()),
                                 s.value->size(), s.value));
    } else {
      out.push_back(OutgoingTensor::Shared(s.encoded->data(), s.value->size(),
                                           s.encoded));
    }
  }
  return out;
}

}  // namespace

TensorStreamer::TensorStreamer(
    const std::vector<std::string>& names,
    const std::vector<core::PublishedTensor>& published,
    std::uint64_t chunk_bytes, WireFormat format, bool batches)
    : header_(HeaderOf(names, published)),
      chunks_(Outgoing(published, format), chunk_bytes, format, batches) {}

std::optional<std::uint64_t> TensorStreamer::Next(grpc::ByteBuffer* msg) {
  if (!header_sent_) {
    header_sent_ = true;
    *msg = std::move(header_);
    return 0;
  }
  return chunks_.Next(msg);
}

}  // namespace weightd::service
