// _weightd: weightd::Client for Python (the `weightd` package wraps it).
//
// Tensors are the caller's numpy arrays (float32, C-contiguous, writeable),
// read and written in place: no copy of their data is made here. The GIL is
// released for the network part of every call; the calling thread waits in
// short slices and checks for signals, so Ctrl-C ends a call promptly (the
// client is then closed: its cancellation cannot be undone).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "client/client.h"

namespace py = pybind11;

namespace weightd::python {
namespace {

// Raised as weightd.Error(code, message); the package maps codes to
// subclasses.
void Raise(const absl::Status& status) {
  py::object error = py::module_::import("weightd").attr("_error_for");
  py::object exception =
      error(static_cast<int>(status.code()), std::string(status.message()));
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exception.ptr())),
                  exception.ptr());
  throw py::error_already_set();
}

using Array = py::array_t<float, py::array::c_style>;

// The caller's tensors, checked before anything is sent: each must be a
// float32, C-contiguous, writeable numpy array.
std::vector<TensorRef> Refs(const py::dict& tensors) {
  std::vector<TensorRef> refs;
  for (const auto& [key, value] : tensors) {
    const std::string name = py::cast<std::string>(key);
    if (!py::isinstance<py::array>(value)) {
      throw py::type_error(absl::StrCat(
          "tensor ", name, ": expected a numpy array or torch tensor, got ",
          std::string(py::str(value.get_type()))));
    }
    py::array array = py::reinterpret_borrow<py::array>(value);
    if (!array.dtype().is(py::dtype::of<float>())) {
      throw py::type_error(absl::StrCat("tensor ", name, ": dtype is ",
                                        std::string(py::str(array.dtype())),
                                        "; weightd holds float32"));
    }
    if (!(array.flags() & py::array::c_style)) {
      throw py::value_error(
          absl::StrCat("tensor ", name,
                       ": not C-contiguous (use numpy.ascontiguousarray "
                       "and keep that array)"));
    }
    if (!array.writeable()) {
      throw py::value_error(
          absl::StrCat("tensor ", name, ": read-only; weightd writes into it"));
    }
    std::vector<std::int64_t> shape(array.shape(),
                                    array.shape() + array.ndim());
    refs.push_back(
        TensorRef{name, std::move(shape),
                  absl::MakeSpan(static_cast<float*>(array.mutable_data()),
                                 static_cast<std::size_t>(array.size()))});
  }
  return refs;
}

class PyClient {
 public:
  // Durations in seconds; `log`: None (standard error) or a callable that
  // takes one line (called with the GIL, from the client's threads).
  PyClient(const std::string& address, const std::string& worker_id,
           double call_timeout, double connect_timeout, bool heartbeat,
           double retry_budget, double initial_backoff, double max_backoff,
           const std::string& wire_format, std::uint64_t split_bytes,
           const py::object& log, double progress_interval, double held_id_wait,
           bool shared_memory, const std::string& tls_ca,
           const std::string& tls_cert, const std::string& tls_key,
           const std::string& tls_server_name, const std::string& token) {
    options_.address = address;
    options_.tls = {.ca_file = tls_ca,
                    .cert_file = tls_cert,
                    .key_file = tls_key,
                    .server_name = tls_server_name};
    options_.token = token;
    options_.shared_memory = shared_memory;
    options_.worker_id = worker_id;
    options_.call_timeout = Seconds("call_timeout", call_timeout);
    options_.connect_timeout = Seconds("connect_timeout", connect_timeout);
    options_.heartbeat = heartbeat;
    options_.retry_budget = Seconds("retry_budget", retry_budget);
    options_.initial_backoff = Seconds("initial_backoff", initial_backoff);
    options_.max_backoff = Seconds("max_backoff", max_backoff);
    if (!ParseWireFormat(wire_format, &options_.wire_format)) {
      throw py::value_error(absl::StrCat("wire_format=", wire_format,
                                         ": use float32, bfloat16 or float16"));
    }
    options_.split_bytes = split_bytes;
    if (!log.is_none()) {
      if (!PyCallable_Check(log.ptr())) {
        throw py::type_error("log: expected None or a callable taking a str");
      }
      // Shared, so that the lambda outlives no reference it needs; its
      // last copy is destroyed with the client, under the GIL (~PyClient).
      auto callable = std::make_shared<py::object>(log);
      options_.log = [callable](absl::string_view line) {
        py::gil_scoped_acquire acquire;
        try {
          (*callable)(std::string(line));
        } catch (py::error_already_set& error) {
          error.discard_as_unraisable("weightd.Client log callable");
        }
      };
      log_ = std::move(callable);
    }
    options_.progress_interval =
        Seconds("progress_interval", progress_interval);
    options_.held_id_wait = Seconds("held_id_wait", held_id_wait);
    options_.cancellation = cancellation_;
    absl::StatusOr<std::unique_ptr<Client>> client;
    Run([&] {
      client = Client::Connect(options_);
      return client.status();
    });
    client_ = std::move(*client);
  }

  // The client's threads may wait for the GIL (its log): end them without
  // holding it.
  ~PyClient() {
    Free();
    options_.log = nullptr;
  }

  // `policies`: tensor name -> policy text (docs/algorithms.md).
  void Join(const py::dict& tensors, const py::dict& policies) {
    std::vector<TensorRef> refs = Refs(tensors);
    for (TensorRef& ref : refs) {
      if (policies.contains(ref.name)) {
        ref.policy = py::cast<std::string>(policies[py::str(ref.name)]);
      }
    }
    Call([&](Client* client) { return client->Join(refs); });
  }
  void Push(const py::dict& tensors, double weight, const std::string& kind) {
    std::vector<TensorRef> refs = Refs(tensors);
    const PushOptions options = Options(weight, kind);
    Call([&](Client* client) { return client->Push(refs, options); });
  }
  void Pull(const py::dict& tensors) {
    std::vector<TensorRef> refs = Refs(tensors);
    Call([&](Client* client) { return client->Pull(refs); });
  }
  void PushPull(const py::dict& tensors, double weight,
                const std::string& kind) {
    std::vector<TensorRef> refs = Refs(tensors);
    const PushOptions options = Options(weight, kind);
    Call([&](Client* client) { return client->PushPull(refs, options); });
  }
  std::uint32_t Barrier(const std::string& name, int count, double timeout) {
    std::uint32_t arrival = 0;
    // 0: no limit of its own (call_timeout still bounds the call).
    const absl::Duration limit =
        timeout == 0 ? absl::InfiniteDuration() : Seconds("timeout", timeout);
    Call([&](Client* client) {
      return client->Barrier(name, count, &arrival, limit);
    });
    return arrival;
  }
  void Leave() {
    Call([&](Client* client) { return client->Leave(); });
  }
  std::uint64_t Version(const std::string& name) {
    absl::StatusOr<std::uint64_t> version = Open()->Version(name);
    if (!version.ok()) Raise(version.status());
    return *version;
  }
  py::dict Status() {
    absl::StatusOr<ServerStatus> status;
    Call([&](Client* client) {
      status = client->GetStatus();
      return status.status();
    });
    py::dict out;
    out["bytes_received"] = status->bytes_received;
    out["bytes_sent"] = status->bytes_sent;
    out["rounds_closed"] = status->rounds_closed;
    return out;
  }
  py::dict Stats() {
    const ClientStats stats = Open()->stats();
    py::dict out;
    out["bytes_pushed"] = stats.bytes_pushed;
    out["bytes_pulled"] = stats.bytes_pulled;
    out["rounds_missed"] = stats.rounds_missed;
    out["retries"] = stats.retries;
    return out;
  }
  // A numpy array over tensor `name`'s place in the shared-memory segment
  // (Client::SharedBufferFor); it keeps the segment mapped while it lives.
  py::array SharedArray(const std::string& name) {
    absl::StatusOr<SharedBuffer> buffer = Open()->SharedBufferFor(name);
    if (!buffer.ok()) Raise(buffer.status());
    auto* keep = new std::shared_ptr<const void>(std::move(buffer->keep));
    py::capsule owner(keep, [](void* p) {
      delete static_cast<std::shared_ptr<const void>*>(p);
    });
    std::vector<py::ssize_t> shape(buffer->shape.begin(), buffer->shape.end());
    return py::array_t<float>(shape, buffer->values.data(), owner);
  }
  const std::string& worker_id() const { return options_.worker_id; }
  bool closed() const { return cancellation_->cancelled(); }
  // Ends every wait; the connection and the heartbeat thread are freed at
  // once, or by the call in flight as it ends (an open channel would hold
  // up the server's shutdown grace).
  void Close() {
    cancellation_->Cancel();
    if (calls_ == 0) Free();
  }

 private:
  // The client, or weightd.Cancelled once it was closed.
  Client* Open() {
    if (client_ == nullptr) Raise(ClosedError());
    return client_.get();
  }
  static absl::Status ClosedError() {
    return absl::CancelledError(
        "this client was closed (after Ctrl-C, or by close()); make a new "
        "one");
  }

  static absl::Duration Seconds(const char* name, double seconds) {
    if (!(seconds >= 0) || seconds > 1e9) {
      throw py::value_error(
          absl::StrCat(name, "=", seconds, ": expected seconds, >= 0"));
    }
    return absl::Seconds(seconds);
  }

  static PushOptions Options(double weight, const std::string& kind) {
    PushOptions options;
    options.weight = weight;
    if (kind == "weights") {
      options.kind = UpdateKind::kWeights;
    } else if (kind == "delta") {
      options.kind = UpdateKind::kDelta;
    } else {
      throw py::value_error(
          absl::StrCat("kind=", kind, ": use \"weights\" or \"delta\""));
    }
    return options;
  }

  // Runs `fn(client)` (see Run) unless the client was closed. A call that
  // ends with the client closed (by Ctrl-C, or by close() from another
  // thread meanwhile) frees it.
  template <typename Fn>
  void Call(Fn fn) {
    if (cancellation_->cancelled()) Raise(ClosedError());
    Client* client = Open();
    ++calls_;
    struct Ended {
      PyClient* self;
      ~Ended() {
        if (--self->calls_ == 0 && self->cancellation_->cancelled()) {
          self->Free();
        }
      }
    } ended{this};
    Run([&] { return fn(client); });
  }

  // Runs `fn` on a thread of its own without the GIL; meanwhile the calling
  // thread checks for signals every 50 ms. A signal handler that raises
  // (Ctrl-C: KeyboardInterrupt) cancels the client, waits for the call to
  // end (promptly: every wait observes the cancellation) and re-raises.
  template <typename Fn>
  void Run(Fn fn) {
    absl::Status status;
    auto done = std::make_shared<absl::Notification>();
    std::thread call([&status, &fn, done] {
      status = fn();
      done->Notify();
    });
    bool interrupted = false;
    for (;;) {
      bool finished;
      {
        py::gil_scoped_release release;
        finished = done->WaitForNotificationWithTimeout(absl::Milliseconds(50));
      }
      if (finished) break;
      if (!interrupted && PyErr_CheckSignals() != 0) {
        interrupted = true;
        cancellation_->Cancel();
      }
    }
    call.join();
    if (interrupted) throw py::error_already_set();
    if (!status.ok()) Raise(status);
  }

  // Destroys the C++ client without the GIL (its threads may wait for it).
  void Free() {
    py::gil_scoped_release release;
    client_.reset();
  }

  ClientOptions options_;
  std::shared_ptr<py::object> log_;
  std::shared_ptr<Cancellation> cancellation_ =
      std::make_shared<Cancellation>();
  std::unique_ptr<Client> client_;
  int calls_ = 0;  // Calls in flight (changed only with the GIL held).
};

}  // namespace
}  // namespace weightd::python

PYBIND11_MODULE(_weightd, m) {
  using weightd::python::PyClient;
  m.doc() = "Native part of the weightd package: weightd::Client.";
  py::class_<PyClient>(m, "Client")
      .def(py::init<const std::string&, const std::string&, double, double,
                    bool, double, double, double, const std::string&,
                    std::uint64_t, const py::object&, double, double, bool,
                    const std::string&, const std::string&, const std::string&,
                    const std::string&, const std::string&>(),
           py::arg("address"), py::arg("worker_id"), py::arg("call_timeout"),
           py::arg("connect_timeout"), py::arg("heartbeat"),
           py::arg("retry_budget"), py::arg("initial_backoff"),
           py::arg("max_backoff"), py::arg("wire_format"),
           py::arg("split_bytes"), py::arg("log"), py::arg("progress_interval"),
           py::arg("held_id_wait"), py::arg("shared_memory"), py::arg("tls_ca"),
           py::arg("tls_cert"), py::arg("tls_key"), py::arg("tls_server_name"),
           py::arg("token"))
      .def("join", &PyClient::Join, py::arg("tensors"), py::arg("policies"))
      .def("push", &PyClient::Push, py::arg("tensors"), py::arg("weight"),
           py::arg("kind"))
      .def("pull", &PyClient::Pull, py::arg("tensors"))
      .def("push_pull", &PyClient::PushPull, py::arg("tensors"),
           py::arg("weight"), py::arg("kind"))
      .def("barrier", &PyClient::Barrier, py::arg("name"), py::arg("count"),
           py::arg("timeout"))
      .def("leave", &PyClient::Leave)
      .def("version", &PyClient::Version, py::arg("name"))
      .def("status", &PyClient::Status)
      .def("stats", &PyClient::Stats)
      .def("shared_array", &PyClient::SharedArray, py::arg("name"))
      .def("close", &PyClient::Close)
      .def_property_readonly("closed", &PyClient::closed)
      .def_property_readonly("worker_id", &PyClient::worker_id);
}
