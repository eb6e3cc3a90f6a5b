// Beside this file: the target adds no include directory for tools/.
#include "tensor_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "absl/base/config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

// Values are copied between memory and the files' little-endian bytes with
// memcpy: right only on a little-endian host (every platform weightd runs
// on; the wire format assumes it too).
static_assert(ABSL_IS_LITTLE_ENDIAN,
              "tensor files assume a little-endian host");

namespace weightd::tensor_files {
namespace {

using Json = nlohmann::json;

// ---------------------------------------------------------------------------
// Dtypes

enum class Dtype { kF32, kF64, kF16, kBF16 };

struct DtypeInfo {
  Dtype dtype;
  const char* name;  // safetensors' spelling.
  std::size_t bytes;
};

constexpr DtypeInfo kDtypes[] = {{Dtype::kF32, "F32", 4},
                                 {Dtype::kF64, "F64", 8},
                                 {Dtype::kF16, "F16", 2},
                                 {Dtype::kBF16, "BF16", 2}};

const DtypeInfo& InfoOf(Dtype dtype) {
  for (const DtypeInfo& i : kDtypes) {
    if (i.dtype == dtype) return i;
  }
  return kDtypes[0];  // Unreachable: every Dtype is listed.
}

// IEEE binary16 to float32, exactly (every half is a float).
float HalfToFloat(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t bits;
  if (exponent == 0x1f) {  // Inf or NaN, the payload kept.
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {  // Normal: rebias 15 -> 127.
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // Signed zero.
    bits = sign;
  } else {  // Subnormal half: a normal float once shifted into place.
    std::uint32_t e = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Decodes `count` values of `dtype` from little-endian `bytes` (which hold
// exactly that many) into float32.
std::vector<float> Decode(Dtype dtype, const char* bytes, std::uint64_t count) {
  std::vector<float> out(count);
  switch (dtype) {
    case Dtype::kF32:
      if (count > 0) std::memcpy(out.data(), bytes, count * 4);
      break;
    case Dtype::kF64:
      for (std::uint64_t i = 0; i < count; ++i) {
        double d;
        std::memcpy(&d, bytes + i * 8, 8);
        out[i] = static_cast<float>(d);  // Round to nearest; may overflow.
      }
      break;
    case Dtype::kF16:
      for (std::uint64_t i = 0; i < count; ++i) {
        std::uint16_t h;
        std::memcpy(&h, bytes + i * 2, 2);
        out[i] = HalfToFloat(h);
      }
      break;
    case Dtype::kBF16:
      for (std::uint64_t i = 0; i < count; ++i) {
        std::uint16_t b;
        std::memcpy(&b, bytes + i * 2, 2);
        const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
        std::memcpy(&out[i], &bits, 4);
      }
      break;
  }
  return out;
}

std::string ShapeString(const std::vector<std::int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// The element count of `shape`, refusing what no file of this size could
// hold: a negative dimension or more than kMaxElements values.
absl::StatusOr<std::uint64_t> CountOf(const std::vector<std::int64_t>& shape) {
  std::uint64_t count = 1;
  for (std::int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shape ", ShapeString(shape), " has a negative dimension"));
    }
    const auto dim = static_cast<std::uint64_t>(d);
    if (dim != 0 && count > kMaxElements / dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", ShapeString(shape), " has more than ",
                       kMaxElements, " elements"));
    }
    count *= dim;
  }
  return count;
}

// Checks what both writers need: names present and distinct, values that
// fill the shape.
absl::Status CheckWritable(absl::Span<const NamedTensor> tensors) {
  // std::set: the target links no Abseil container or hash library.
  std::set<absl::string_view> names;
  for (const NamedTensor& t : tensors) {
    if (t.name.empty()) {
      return absl::InvalidArgumentError("a tensor has an empty name");
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.name, " is listed twice"));
    }
    absl::StatusOr<std::uint64_t> count = CountOf(t.shape);
    if (!count.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.name, ": ", count.status().message()));
    }
    if (*count != t.values.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.name, " of shape ", ShapeString(t.shape),
                       " has ", t.values.size(), " values, not ", *count));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Files

absl::Status ErrnoError(int error, absl::string_view what,
                        absl::string_view path) {
  return absl::ErrnoToStatus(error, absl::StrCat(what, " ", path));
}

// A file opened for reading, its size known up front so that every range
// a header names can be checked against it before it is read.
class InputFile {
 public:
  static absl::StatusOr<InputFile> Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError(errno, "cannot open", path);
    InputFile file(fd, path);
    struct stat st;
    if (::fstat(fd, &st) != 0) return ErrnoError(errno, "cannot stat", path);
    // A FIFO or device has no size to check offsets against.
    if (!S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " is not a regular file"));
    }
    file.size_ = static_cast<std::uint64_t>(st.st_size);
    return file;
  }

  InputFile(InputFile&& o) noexcept
      : fd_(std::exchange(o.fd_, -1)),
        path_(std::move(o.path_)),
        size_(o.size_) {}
  InputFile& operator=(InputFile&&) = delete;
  ~InputFile() {
    if (fd_ >= 0) ::close(fd_);
  }

  std::uint64_t size() const { return size_; }

  // Reads [offset, offset + n), which the caller checked lies within size().
  absl::Status ReadAt(std::uint64_t offset, std::uint64_t n, char* out) const {
    while (n > 0) {
      const std::size_t want =
          static_cast<std::size_t>(std::min<std::uint64_t>(n, 1u << 30));
      const ssize_t got = ::pread(fd_, out, want, static_cast<off_t>(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(errno, "cannot read", path_);
      }
      // Shrunk since fstat (someone rewriting it): as truncated.
      if (got == 0) {
        return absl::DataLossError(
            absl::StrCat(path_, " is truncated: it ended while being read"));
      }
      out += got;
      offset += static_cast<std::uint64_t>(got);
      n -= static_cast<std::uint64_t>(got);
    }
    return absl::OkStatus();
  }

 private:
  InputFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

  int fd_;
  std::string path_;
  std::uint64_t size_ = 0;
};

// PATH.tmp, renamed over PATH once complete and on disk; removed if the
// writer is destroyed before Commit().
class AtomicFile {
 public:
  explicit AtomicFile(std::string path)
      : path_(std::move(path)), tmp_(path_ + ".tmp") {}
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  const std::string& tmp_path() const { return tmp_; }

  absl::Status Create() {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return ErrnoError(errno, "cannot create", tmp_);
    return absl::OkStatus();
  }

  absl::Status Write(const void* data, std::uint64_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const std::size_t want =
          static_cast<std::size_t>(std::min<std::uint64_t>(n, 1u << 30));
      const ssize_t wrote = ::write(fd_, p, want);
      if (wrote < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(errno, "cannot write", tmp_);
      }
      p += wrote;
      n -= static_cast<std::uint64_t>(wrote);
    }
    return absl::OkStatus();
  }

  // For a file written by someone else (libzip) at tmp_path(): the one
  // Create() made is replaced, so open what is there now.
  absl::Status Reopen() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = ::open(tmp_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return ErrnoError(errno, "cannot open", tmp_);
    return absl::OkStatus();
  }

  // fsync before the rename: otherwise a crash could leave PATH naming a
  // file whose blocks never reached the disk.
  absl::Status Commit() {
    if (::fsync(fd_) != 0) return ErrnoError(errno, "cannot flush", tmp_);
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) return ErrnoError(errno, "cannot close", tmp_);
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      return ErrnoError(errno, "cannot rename " + tmp_ + " to", path_);
    }
    committed_ = true;
    return absl::OkStatus();
  }

 private:
  std::string path_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// ---------------------------------------------------------------------------
// safetensors

// Builds the header's JSON with nlohmann's DOM parser, adding what it does
// not check: a repeated key (the reference implementation refuses one too;
// nlohmann would keep the last) and nesting deeper than a header's three
// levels (so that a megabyte of '[' costs nothing). It also keeps the parse
// error's text, which the exception-free parse() drops.
class HeaderSax {
 public:
  explicit HeaderSax(Json* result)
      : dom_(*result, /*allow_exceptions=*/false) {}

  const std::string& error() const { return error_; }

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(Json::number_integer_t v) {
    return dom_.number_integer(v);
  }
  bool number_unsigned(Json::number_unsigned_t v) {
    return dom_.number_unsigned(v);
  }
  bool number_float(Json::number_float_t v, const Json::string_t& s) {
    return dom_.number_float(v, s);
  }
  bool string(Json::string_t& v) { return dom_.string(v); }
  bool binary(Json::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) {
    if (!Enter()) return false;
    keys_.emplace_back();
    return dom_.start_object(n);
  }
  bool key(Json::string_t& k) {
    if (!keys_.back().insert(k).second) {
      error_ = absl::StrCat("the key \"", k, "\" appears twice");
      return false;
    }
    return dom_.key(k);
  }
  bool end_object() {
    keys_.pop_back();
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    if (!Enter()) return false;
    return dom_.start_array(n);
  }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  bool parse_error(std::size_t, const std::string&,
                   const nlohmann::detail::exception& e) {
    error_ = e.what();
    return false;
  }

 private:
  // {name: {"shape": [...]}} is three levels deep.
  static constexpr int kMaxDepth = 3;

  bool Enter() {
    if (++depth_ > kMaxDepth) {
      error_ = absl::StrCat("nesting deeper than ", kMaxDepth, " levels");
      return false;
    }
    return true;
  }

  nlohmann::detail::json_sax_dom_parser<Json> dom_;
  std::vector<std::set<std::string>> keys_;
  int depth_ = 0;
  std::string error_;
};

absl::StatusOr<Dtype> SafetensorsDtype(const std::string& tensor,
                                       const std::string& name) {
  for (const DtypeInfo& i : kDtypes) {
    if (name == i.name) return i.dtype;
  }
  static constexpr const char* kRefused[] = {"BOOL", "U8",      "I8",     "U16",
                                             "I16",  "U32",     "I32",    "U64",
                                             "I64",  "F8_E5M2", "F8_E4M3"};
  for (const char* r : kRefused) {
    if (name == r) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", tensor, " has dtype ", name,
          ": only floating-point tensors (F32, F64, F16, BF16) can be read"));
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("tensor ", tensor, " has unknown dtype \"", name, "\""));
}

// One tensor as the header describes it.
struct Entry {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<std::int64_t> shape;
  std::uint64_t count = 0;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

absl::StatusOr<Entry> ParseEntry(const std::string& name, const Json& info) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("header entry of tensor ", name, " ", why));
  };
  if (!info.is_object()) return bad("is not an object");
  Entry e;
  e.name = name;
  auto dtype = info.find("dtype");
  if (dtype == info.end() || !dtype->is_string()) {
    return bad("has no \"dtype\" string");
  }
  auto shape = info.find("shape");
  if (shape == info.end() || !shape->is_array()) {
    return bad("has no \"shape\" array");
  }
  for (const Json& d : *shape) {
    // Positive integers parse as unsigned; anything else (negative, a
    // fraction, a string, 2^64 and up) is not a dimension.
    if (!d.is_number_unsigned() ||
        d.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) {
      return bad(absl::StrCat("has a shape entry that is not a dimension: ",
                              d.dump()));
    }
    e.shape.push_back(static_cast<std::int64_t>(d.get<std::uint64_t>()));
  }
  auto offsets = info.find("data_offsets");
  if (offsets == info.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() ||
      !(*offsets)[1].is_number_unsigned()) {
    return bad("has no \"data_offsets\" [begin, end] of byte offsets");
  }
  e.begin = (*offsets)[0].get<std::uint64_t>();
  e.end = (*offsets)[1].get<std::uint64_t>();
  if (e.end < e.begin) {
    return bad(absl::StrCat("has data_offsets [", e.begin, ", ", e.end,
                            "] that end before they begin"));
  }
  absl::StatusOr<Dtype> parsed =
      SafetensorsDtype(name, dtype->get<std::string>());
  if (!parsed.ok()) return parsed.status();
  e.dtype = *parsed;
  absl::StatusOr<std::uint64_t> count = CountOf(e.shape);
  if (!count.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": ", count.status().message()));
  }
  e.count = *count;
  const std::uint64_t need = e.count * InfoOf(e.dtype).bytes;
  if (e.end - e.begin != need) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, ": data_offsets [", e.begin, ", ", e.end, "] hold ",
        e.end - e.begin, " bytes, but shape ", ShapeString(e.shape), " of ",
        InfoOf(e.dtype).name, " needs ", need));
  }
  return e;
}

// ---------------------------------------------------------------------------
// NPY

constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr std::size_t kNpyMagicBytes = 6;
// numpy's own limit on a header it reads (numpy.lib.format, max_header_size
// is 10000; a rank-32 shape of large dimensions needs far less).
constexpr std::size_t kMaxNpyHeaderBytes = 65535;
// numpy pads the header so that the data starts at a multiple of this.
constexpr std::size_t kNpyAlign = 64;

// The header of version 1.0 for a float32 array of `shape`, padded.
std::string NpyHeader(const std::vector<std::int64_t>& shape) {
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";  // Python's one-element tuple.
  std::string dict = absl::StrCat(
      "{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  // Magic, version (2 bytes), header length (2 bytes), dict, spaces, '\n'.
  const std::size_t unpadded = kNpyMagicBytes + 4 + dict.size() + 1;
  dict.append((kNpyAlign - unpadded % kNpyAlign) % kNpyAlign, ' ');
  dict.push_back('\n');
  std::string out(kNpyMagic, kNpyMagicBytes);
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(dict.size() & 0xff));
  out.push_back(static_cast<char>(dict.size() >> 8));
  return out + dict;
}

// What an NPY header says.
struct NpyHeaderInfo {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::int64_t> shape;
};

// Parses the Python dict literal of an NPY header: the keys descr,
// fortran_order and shape, each once, with a string, a bool and a tuple of
// integers. Nothing else is Python numpy writes there.
class NpyDictParser {
 public:
  explicit NpyDictParser(absl::string_view text) : s_(text) {}

  absl::StatusOr<NpyHeaderInfo> Parse() {
    NpyHeaderInfo info;
    bool has_descr = false, has_order = false, has_shape = false;
    if (!Eat('{')) return Error("does not start with '{'");
    while (!Eat('}')) {
      std::string key;
      if (!String(&key)) return Error("has a key that is not a string");
      if (!Eat(':')) return Error("lacks a ':' after a key");
      if (key == "descr" && !has_descr) {
        // A list here is a structured dtype: not a tensor of numbers.
        if (!String(&info.descr))
          return Error("has a descr that is not a string");
        has_descr = true;
      } else if (key == "fortran_order" && !has_order) {
        if (Word("True")) {
          info.fortran_order = true;
        } else if (!Word("False")) {
          return Error("has a fortran_order that is not True or False");
        }
        has_order = true;
      } else if (key == "shape" && !has_shape) {
        if (!Tuple(&info.shape))
          return Error("has a shape that is not a tuple of integers");
        has_shape = true;
      } else {
        return Error(
            absl::StrCat("has an unexpected or repeated key '", key, "'"));
      }
      if (!Eat(',')) {
        if (!Eat('}')) return Error("lacks a ',' or '}' after a value");
        break;
      }
    }
    Skip();
    if (i_ != s_.size()) return Error("has text after the dict");
    if (!has_descr || !has_order || !has_shape) {
      return Error("lacks one of descr, fortran_order and shape");
    }
    return info;
  }

 private:
  absl::Status Error(absl::string_view why) const {
    return absl::InvalidArgumentError(absl::StrCat("NPY header ", why));
  }
  void Skip() {
    while (i_ < s_.size() &&
           absl::ascii_isspace(static_cast<unsigned char>(s_[i_])))
      ++i_;
  }
  bool Eat(char c) {
    Skip();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool Word(absl::string_view w) {
    Skip();
    if (absl::StartsWith(s_.substr(i_), w)) {
      i_ += w.size();
      return true;
    }
    return false;
  }
  bool String(std::string* out) {
    Skip();
    if (i_ >= s_.size() || (s_[i_] != '\'' && s_[i_] != '"')) return false;
    const char quote = s_[i_++];
    const std::size_t end = s_.find(quote, i_);
    if (end == absl::string_view::npos) return false;
    *out = std::string(s_.substr(i_, end - i_));
    i_ = end + 1;
    return true;
  }
  bool Tuple(std::vector<std::int64_t>* out) {
    if (!Eat('(')) return false;
    while (!Eat(')')) {
      Skip();
      std::uint64_t v = 0;
      const std::size_t start = i_;
      while (i_ < s_.size() &&
             absl::ascii_isdigit(static_cast<unsigned char>(s_[i_]))) {
        const std::uint64_t digit = static_cast<std::uint64_t>(s_[i_] - '0');
        if (v > (static_cast<std::uint64_t>(INT64_MAX) - digit) / 10)
          return false;
        v = v * 10 + digit;
        ++i_;
      }
      if (i_ == start) return false;
      Word("L");  // Python 2's long suffix, which old files carry.
      out->push_back(static_cast<std::int64_t>(v));
      if (!Eat(',')) {
        if (!Eat(')')) return false;
        break;
      }
    }
    return true;
  }

  absl::string_view s_;
  std::size_t i_ = 0;
};

// The dtype of an NPY descr ('<f4', '>f8', '=f2'); *swap says whether its
// bytes are big-endian. Everything else is refused, named.
absl::StatusOr<Dtype> NpyDtype(const std::string& tensor,
                               const std::string& descr, bool* swap) {
  *swap = false;
  if (descr.size() >= 2) {
    const char order = descr[0];
    const std::string kind = descr.substr(1);
    const bool known_order =
        order == '<' || order == '>' || order == '=' || order == '|';
    if (known_order && (kind == "f4" || kind == "f8" || kind == "f2")) {
      if (order == '|') {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", tensor, " has dtype '", descr,
                         "' without a byte order"));
      }
      *swap = order == '>';
      return kind == "f4"   ? Dtype::kF32
             : kind == "f8" ? Dtype::kF64
                            : Dtype::kF16;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("tensor ", tensor, " has dtype '", descr,
                   "': only floating-point tensors (float32, float64, float16) "
                   "can be read"));
}

// Row-major values of an array stored in Fortran (column-major) order.
std::vector<float> FromFortranOrder(const std::vector<float>& in,
                                    const std::vector<std::int64_t>& shape) {
  if (shape.size() < 2) return in;
  std::vector<float> out(in.size());
  // Walk the output in row-major order with an odometer over the index,
  // keeping the column-major offset of the same index alongside.
  std::vector<std::uint64_t> stride(shape.size());
  std::uint64_t s = 1;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    stride[d] = s;
    s *= static_cast<std::uint64_t>(shape[d]);
  }
  std::vector<std::int64_t> index(shape.size(), 0);
  std::uint64_t source = 0;
  for (std::uint64_t i = 0; i < out.size(); ++i) {
    out[i] = in[source];
    for (std::size_t d = shape.size(); d-- > 0;) {
      if (++index[d] < shape[d]) {
        source += stride[d];
        break;
      }
      source -= stride[d] * static_cast<std::uint64_t>(shape[d] - 1);
      index[d] = 0;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// zip

struct ZipCloser {
  void operator()(zip_t* z) const { zip_discard(z); }
};
struct ZipFileCloser {
  void operator()(zip_file_t* f) const { zip_fclose(f); }
};

std::string ZipErrorText(zip_error_t* error) {
  return zip_error_strerror(error);
}

// Reads exactly `n` bytes of member `what` of `path`. Memory grows with
// the bytes actually inflated, not with what the header claims: a member
// that ends early costs no more than it holds.
absl::Status ReadMember(zip_file_t* file, const std::string& path,
                        const std::string& what, std::uint64_t n,
                        std::string* out) {
  constexpr std::uint64_t kStep = std::uint64_t{16} << 20;
  out->clear();
  while (out->size() < n) {
    const std::uint64_t have = out->size();
    const std::uint64_t want = std::min(kStep, n - have);
    out->resize(have + want);
    const zip_int64_t got = zip_fread(file, out->data() + have, want);
    if (got < 0) {
      return absl::DataLossError(absl::StrCat(
          path, ": member ", what,
          " cannot be read: ", ZipErrorText(zip_file_get_error(file))));
    }
    out->resize(have + static_cast<std::uint64_t>(got));
    if (got == 0) {
      return absl::DataLossError(absl::StrCat(path, ": member ", what,
                                              " is truncated: it holds ", have,
                                              " bytes, ", n, " expected"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<NamedTensor> ReadNpyMember(zip_t* archive, zip_uint64_t index,
                                          const std::string& path,
                                          const std::string& member) {
  const std::string name = member.substr(0, member.size() - 4);
  std::unique_ptr<zip_file_t, ZipFileCloser> file(
      zip_fopen_index(archive, index, 0));
  if (file == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": member ", member,
        " cannot be opened: ", ZipErrorText(zip_get_error(archive))));
  }
  std::string preamble;
  absl::Status read =
      ReadMember(file.get(), path, member, kNpyMagicBytes + 2, &preamble);
  if (!read.ok()) return read;
  if (preamble.compare(0, kNpyMagicBytes, kNpyMagic, kNpyMagicBytes) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": member ", member, " is not an NPY file"));
  }
  const int major = static_cast<unsigned char>(preamble[kNpyMagicBytes]);
  // 1.0: 2-byte header length; 2.0 and 3.0 (a UTF-8 header): 4 bytes.
  if (major < 1 || major > 3) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": member ", member,
                                                   " has NPY version ", major,
                                                   " (1, 2 and 3 are known)"));
  }
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  std::string length_field;
  read = ReadMember(file.get(), path, member, length_bytes, &length_field);
  if (!read.ok()) return read;
  std::uint64_t header_bytes = 0;
  for (std::size_t i = length_bytes; i-- > 0;) {
    header_bytes =
        header_bytes << 8 | static_cast<unsigned char>(length_field[i]);
  }
  if (header_bytes > kMaxNpyHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": member ", member, " has an NPY header of ", header_bytes,
        " bytes (at most ", kMaxNpyHeaderBytes, ")"));
  }
  std::string header;
  read = ReadMember(file.get(), path, member, header_bytes, &header);
  if (!read.ok()) return read;
  absl::StatusOr<NpyHeaderInfo> info = NpyDictParser(header).Parse();
  if (!info.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": member ", member, ": ", info.status().message()));
  }
  bool swap = false;
  absl::StatusOr<Dtype> dtype = NpyDtype(name, info->descr, &swap);
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", dtype.status().message()));
  }
  absl::StatusOr<std::uint64_t> count = CountOf(info->shape);
  if (!count.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": tensor ", name, ": ", count.status().message()));
  }
  const std::size_t item = InfoOf(*dtype).bytes;
  // A deflated member can claim far more than the file holds (a zip
  // bomb): its data and the float32 copy must fit in half of this
  // machine's memory, else it is refused before anything is inflated.
  const std::uint64_t needed = *count * (item + 4);
  const std::uint64_t memory =
      static_cast<std::uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
      static_cast<std::uint64_t>(::sysconf(_SC_PAGE_SIZE));
  if (needed > memory / 2) {
    return absl::ResourceExhaustedError(absl::StrCat(
        path, ": tensor ", name, " of shape ", ShapeString(info->shape),
        " needs ", needed, " bytes to read, more than half this machine's ",
        memory, " bytes of memory"));
  }
  std::string data;
  read = ReadMember(file.get(), path, member, *count * item, &data);
  if (!read.ok()) return read;
  // Reading on to the end makes libzip check the member's CRC, and shows
  // bytes the header does not account for.
  char extra;
  const zip_int64_t more = zip_fread(file.get(), &extra, 1);
  if (more < 0) {
    return absl::DataLossError(absl::StrCat(
        path, ": member ", member,
        " is corrupt: ", ZipErrorText(zip_file_get_error(file.get()))));
  }
  if (more > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": member ", member, " holds more bytes than its shape ",
        ShapeString(info->shape), " needs"));
  }
  if (swap) {
    for (std::size_t i = 0; i < data.size(); i += item) {
      std::reverse(data.begin() + i, data.begin() + i + item);
    }
  }
  NamedTensor t;
  t.name = name;
  t.shape = info->shape;
  t.values = Decode(*dtype, data.data(), *count);
  if (info->fortran_order) t.values = FromFortranOrder(t.values, t.shape);
  t.source_dtype = InfoOf(*dtype).name;
  return t;
}

}  // namespace

absl::string_view FormatName(TensorFileFormat format) {
  return format == TensorFileFormat::kNpz ? "npz" : "safetensors";
}

absl::StatusOr<TensorFileFormat> FormatFor(absl::string_view flag,
                                           absl::string_view path) {
  if (flag == "safetensors") return TensorFileFormat::kSafetensors;
  if (flag == "npz") return TensorFileFormat::kNpz;
  if (!flag.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown format \"", flag, "\": use safetensors or npz"));
  }
  if (absl::EndsWith(path, ".safetensors"))
    return TensorFileFormat::kSafetensors;
  if (absl::EndsWith(path, ".npz")) return TensorFileFormat::kNpz;
  return absl::InvalidArgumentError(absl::StrCat(
      "cannot tell the format of ", path,
      ": name it *.safetensors or *.npz, or give --format=safetensors|npz"));
}

absl::Status WriteSafetensors(
    const std::string& path, absl::Span<const NamedTensor> tensors,
    const std::map<std::string, std::string>& metadata) {
  absl::Status writable = CheckWritable(tensors);
  if (!writable.ok()) return writable;
  Json header = Json::object();
  std::uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    const std::uint64_t bytes = t.values.size() * sizeof(float);
    header[t.name] = {{"dtype", "F32"},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  // replace: never throw on bytes that are not UTF-8 (names and metadata
  // should be ASCII; a stray byte must not end the program).
  std::string text =
      header.dump(-1, ' ', false, Json::error_handler_t::replace);
  // Spaces to a multiple of 8, as the reference writer pads: the data then
  // starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  char length[8];
  const std::uint64_t n = text.size();
  std::memcpy(length, &n, 8);

  AtomicFile file(path);
  absl::Status s = file.Create();
  if (s.ok()) s = file.Write(length, 8);
  if (s.ok()) s = file.Write(text.data(), text.size());
  for (const NamedTensor& t : tensors) {
    if (!s.ok()) break;
    s = file.Write(t.values.data(), t.values.size() * sizeof(float));
  }
  if (s.ok()) s = file.Commit();
  return s;
}

absl::StatusOr<TensorFile> ReadSafetensors(const std::string& path) {
  absl::StatusOr<InputFile> opened = InputFile::Open(path);
  if (!opened.ok()) return opened.status();
  const InputFile& file = *opened;
  if (file.size() < 8) {
    return absl::DataLossError(
        absl::StrCat(path, " is truncated: ", file.size(),
                     " bytes, less than the 8-byte header length a safetensors "
                     "file starts with"));
  }
  char length[8];
  absl::Status s = file.ReadAt(0, 8, length);
  if (!s.ok()) return s;
  std::uint64_t header_bytes;
  std::memcpy(&header_bytes, length, 8);
  if (header_bytes > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": header length ", header_bytes, " exceeds the limit of ",
        kMaxSafetensorsHeaderBytes, " bytes (not a safetensors file?)"));
  }
  if (header_bytes > file.size() - 8) {
    return absl::DataLossError(
        absl::StrCat(path, " is truncated: its header length is ", header_bytes,
                     " bytes, but only ", file.size() - 8, " follow"));
  }
  std::string text(header_bytes, '\0');
  s = file.ReadAt(8, header_bytes, text.data());
  if (!s.ok()) return s;
  if (text.empty() || text[0] != '{') {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": header JSON invalid: it does not start with '{'"));
  }
  Json header;
  HeaderSax sax(&header);
  const bool parsed = Json::sax_parse(text, &sax, Json::input_format_t::json,
                                      /*strict=*/true);
  if (!parsed || header.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header JSON invalid: ", sax.error()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header JSON invalid: not an object"));
  }

  TensorFile out;
  out.format = TensorFileFormat::kSafetensors;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_null()) continue;
      if (!it->is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": __metadata__ is not an object"));
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": __metadata__ value of \"", m.key(),
                           "\" is not a string"));
        }
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    absl::StatusOr<Entry> entry = ParseEntry(it.key(), *it);
    if (!entry.ok()) {
      return absl::Status(entry.status().code(),
                          absl::StrCat(path, ": ", entry.status().message()));
    }
    entries.push_back(*std::move(entry));
  }

  // The data must be covered exactly: sorted by offset, each tensor begins
  // where the previous one ended and the last ends at the end of the file.
  const std::uint64_t data_start = 8 + header_bytes;
  const std::uint64_t data_bytes = file.size() - data_start;
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry& e : entries) {
    if (e.end > data_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", e.name, " has data_offsets [",
                       e.begin, ", ", e.end, "] past the end of the data (",
                       data_bytes, " bytes; truncated?)"));
    }
    if (e.begin < covered) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensors ", previous->name, " and ", e.name,
                       " overlap (data_offsets [", previous->begin, ", ",
                       previous->end, "] and [", e.begin, ", ", e.end, "])"));
    }
    if (e.begin > covered) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": bytes [", covered, ", ", e.begin,
          ") of the data belong to no tensor (a gap before ", e.name, ")"));
    }
    covered = e.end;
    previous = &e;
  }
  if (covered != data_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": bytes [", covered, ", ", data_bytes,
                     ") of the data belong to no tensor (a gap at the end)"));
  }
  std::string bytes;
  for (const Entry& e : entries) {
    bytes.resize(e.end - e.begin);
    s = file.ReadAt(data_start + e.begin, bytes.size(), bytes.data());
    if (!s.ok()) return s;
    NamedTensor t;
    t.name = e.name;
    t.shape = e.shape;
    t.values = Decode(e.dtype, bytes.data(), e.count);
    t.source_dtype = InfoOf(e.dtype).name;
    out.tensors.push_back(std::move(t));
  }
  return out;
}

absl::Status WriteNpz(const std::string& path,
                      absl::Span<const NamedTensor> tensors) {
  absl::Status writable = CheckWritable(tensors);
  if (!writable.ok()) return writable;
  AtomicFile file(path);
  // Created here first, so that an unwritable place fails with its errno
  // (libzip's codes do not carry it to zip_open's caller).
  absl::Status created = file.Create();
  if (!created.ok()) return created;
  int code = 0;
  std::unique_ptr<zip_t, ZipCloser> archive(
      zip_open(file.tmp_path().c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code));
  if (archive == nullptr) {
    zip_error_t error;
    zip_error_init_with_code(&error, code);
    const std::string text = ZipErrorText(&error);
    zip_error_fini(&error);
    return absl::InternalError(
        absl::StrCat("cannot create ", file.tmp_path(), ": ", text));
  }
  // The headers must outlive zip_close, which reads every member: the
  // fragments point into them and into the tensors' values (no copy).
  std::vector<std::string> headers;
  headers.reserve(tensors.size());
  for (const NamedTensor& t : tensors) {
    headers.push_back(NpyHeader(t.shape));
    const zip_buffer_fragment_t fragments[2] = {
        {reinterpret_cast<zip_uint8_t*>(headers.back().data()),
         headers.back().size()},
        {reinterpret_cast<zip_uint8_t*>(const_cast<float*>(t.values.data())),
         t.values.size() * sizeof(float)}};
    zip_source_t* source = zip_source_buffer_fragment(
        archive.get(), fragments, t.values.empty() ? 1 : 2, /*freep=*/0);
    const std::string member = t.name + ".npy";
    const zip_int64_t index = source == nullptr
                                  ? -1
                                  : zip_file_add(archive.get(), member.c_str(),
                                                 source, ZIP_FL_ENC_UTF_8);
    if (index < 0) {
      if (source != nullptr) zip_source_free(source);
      return absl::InternalError(
          absl::StrCat("cannot add ", member, " to ", file.tmp_path(), ": ",
                       ZipErrorText(zip_get_error(archive.get()))));
    }
    // Stored, as numpy.savez writes (and so readable by np.load mmap).
    if (zip_set_file_compression(archive.get(),
                                 static_cast<zip_uint64_t>(index), ZIP_CM_STORE,
                                 0) != 0) {
      return absl::InternalError(
          absl::StrCat("cannot store ", member, ": ",
                       ZipErrorText(zip_get_error(archive.get()))));
    }
  }
  if (zip_close(archive.get()) != 0) {
    zip_error_t* error = zip_get_error(archive.get());
    const std::string text = absl::StrCat("cannot write ", file.tmp_path(),
                                          ": ", ZipErrorText(error));
    // A full disk or a permission is the system's error: keep its code.
    return zip_error_system_type(error) == ZIP_ET_SYS
               ? absl::ErrnoToStatus(zip_error_code_system(error), text)
               : absl::InternalError(text);
  }
  archive.release();  // zip_close freed it.
  absl::Status s = file.Reopen();
  if (s.ok()) s = file.Commit();
  return s;
}

absl::StatusOr<TensorFile> ReadNpz(const std::string& path) {
  // Through InputFile first: the same errors as safetensors for a missing
  // or special file.
  absl::StatusOr<InputFile> opened = InputFile::Open(path);
  if (!opened.ok()) return opened.status();
  int code = 0;
  std::unique_ptr<zip_t, ZipCloser> archive(
      zip_open(path.c_str(), ZIP_RDONLY, &code));
  if (archive == nullptr) {
    zip_error_t error;
    zip_error_init_with_code(&error, code);
    const std::string text = ZipErrorText(&error);
    zip_error_fini(&error);
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a readable .npz (zip) archive: ", text));
  }
  TensorFile out;
  out.format = TensorFileFormat::kNpz;
  const zip_int64_t members = zip_get_num_entries(archive.get(), 0);
  std::set<std::string> names;
  for (zip_int64_t i = 0; i < members; ++i) {
    const char* raw =
        zip_get_name(archive.get(), static_cast<zip_uint64_t>(i), 0);
    const std::string member = raw == nullptr ? "" : raw;
    if (member.size() <= 4 || !absl::EndsWith(member, ".npy")) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": member \"", member, "\" is not a NAME.npy array"));
    }
    absl::StatusOr<NamedTensor> t = ReadNpyMember(
        archive.get(), static_cast<zip_uint64_t>(i), path, member);
    if (!t.ok()) return t.status();
    if (!names.insert(t->name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": member ", member, " appears twice"));
    }
    out.tensors.push_back(*std::move(t));
  }
  return out;
}

absl::StatusOr<TensorFile> ReadTensorFile(const std::string& path) {
  absl::StatusOr<InputFile> opened = InputFile::Open(path);
  if (!opened.ok()) return opened.status();
  char start[9] = {};
  const std::uint64_t n = std::min<std::uint64_t>(opened->size(), sizeof start);
  absl::Status s = opened->ReadAt(0, n, start);
  if (!s.ok()) return s;
  // A zip archive starts with a local file header, or (empty) with the end
  // of its central directory.
  if (n >= 4 && (std::memcmp(start, "PK\x03\x04", 4) == 0 ||
                 std::memcmp(start, "PK\x05\x06", 4) == 0)) {
    return ReadNpz(path);
  }
  if (absl::EndsWith(path, ".npz")) return ReadNpz(path);
  if (absl::EndsWith(path, ".safetensors") || (n == 9 && start[8] == '{')) {
    return ReadSafetensors(path);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, " is neither a safetensors file nor an .npz archive"));
}

}  // namespace weightd::tensor_files
