#!/usr/bin/env bash
# weightctl export and import against real daemons, the weights made by a
# real (short) training job:
#  1. export all tensors to safetensors and to .npz, and a glob's to a file
#     whose format comes from --format; a bad extension or a pattern that
#     matches nothing writes nothing;
#  2. the files read by readers that are not ours: the .npz by numpy
#     (np.load), the .safetensors by a reader written here from the
#     specification (struct, json, numpy.frombuffer), which also checks its
#     layout (header padding, offsets in order, no gap or overlap); the two
#     files hold bit-identical values, and the versions in __metadata__ are
#     those export printed;
#  3. import into a fresh daemon, export again: bit-identical; the .npz
#     imported under --prefix too;
#  4. a file with a tensor of another shape than the server's changes
#     nothing (weightctl status identical before and after, exit 1, naming
#     it); a tensor of the same shape is kept (its values unchanged) and
#     reported, the others created;
#  5. an int32 .npz is refused naming the tensor and its dtype; a float64
#     .npz (deflated, as np.savez_compressed writes) is converted, and said
#     so; a file that does not parse is refused;
#  6. two shards: import splits the 401 KB layer by rows over both (each
#     shard holds a part), and export puts the parts back together: the
#     file equals the single server's bit for bit.
# Usage: transfer_test.sh BUILD_DIR
source "$(dirname "$0")/../fault/lib.sh"
fault_init "${1:?usage: transfer_test.sh BUILD_DIR}" transfer
py=/usr/bin/python3
$py -c 'import numpy' 2>/dev/null ||
  { echo "SKIP: $py has no numpy (apt-get install python3-numpy)"; exit 77; }

# ctl ARGS...: weightctl, its stdout in $work/out and stderr in $work/err;
# returns its exit code.
ctl() {
  local rc=0
  "$weightctl" "$@" >"$work/out" 2>"$work/err" || rc=$?
  return $rc
}
# expect_exit CODE ARGS...: weightctl must exit with CODE.
expect_exit() {
  local want=$1 rc=0
  shift
  ctl "$@" || rc=$?
  [[ $rc == "$want" ]] ||
    fail "weightctl $* exited $rc, not $want: $(cat "$work/out" "$work/err")"
}

# The reader of the safetensors specification
# (https://github.com/huggingface/safetensors#format), independent of
# tools/tensor_files.cc. Prints nothing; raises on any departure.
cat >"$work/st.py" <<'PY'
import json, struct
import numpy as np

def read_safetensors(path):
    """Returns ({name: float32 array}, metadata), checking the layout."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0, "header length %d is not a multiple of 8" % n
    text = data[8:8 + n].decode("utf-8")
    assert text.startswith("{"), "header does not start with {"
    assert text.rstrip(" ").endswith("}"), "header padded with other than spaces"
    header = json.loads(text)
    metadata = header.pop("__metadata__", {}) or {}
    buf = data[8 + n:]
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k)
                   for k, v in header.items())
    at = 0
    for begin, end, name in spans:
        assert begin == at, "gap or overlap before %s (%d, expected %d)" % (name, begin, at)
        at = end
    assert at == len(buf), "data is %d bytes, tensors cover %d" % (len(buf), at)
    # Written in the order of their offsets (the header is a JSON object:
    # its own order is free).
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", "%s is %s" % (name, info["dtype"])
        begin, end = info["data_offsets"]
        a = np.frombuffer(buf[begin:end], dtype="<f4")
        assert a.size == int(np.prod(info["shape"], dtype=np.int64)), name
        tensors[name] = a.reshape(info["shape"])
    return tensors, metadata

def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a.view(np.uint32), b.view(np.uint32))
PY
# pycheck SCRIPT ARGS...: runs SCRIPT (stdin) with st.py importable.
pycheck() { PYTHONPATH="$work" $py - "$@"; }

echo "--- 1. export a trained model"
start_weightd "$work/a.log" 127.0.0.1:0 --insecure
a=$address
worker_pids=()
"$worker" --server="$a" --workers=1 --rank=0 --rounds=3 --local_steps=10 \
  --train_limit=500 >"$work/worker.0" 2>&1 &
worker_pids[0]=$!
pids+=($!)
wait_workers "$work/worker"
expect_exit 0 export --server="$a" --out="$work/all.safetensors"
cp "$work/out" "$work/export_st.out"
grep -qE '^hidden/w +\[784,128\] +3 +401408$' "$work/out" ||
  fail "export's table lacks hidden/w [784,128] version 3: $(cat "$work/out")"
grep -q "^wrote $work/all.safetensors (safetensors): 5 tensors" "$work/out" ||
  fail "export did not name its file: $(cat "$work/out")"
expect_exit 0 export --server="$a" --out="$work/all.npz" --json
cp "$work/out" "$work/export_npz.json"
expect_exit 0 export --server="$a" --out="$work/hidden.bin" --format=npz 'hidden/*' 'hidden/b'
[[ ! -e $work/all.safetensors.tmp && ! -e $work/all.npz.tmp ]] ||
  fail "export left a .tmp file"
echo "ok: exported 5 tensors to safetensors and .npz, hidden/* by --format=npz"
expect_exit 2 export --server="$a" --out="$work/x.bin"
grep -q -- "--format=safetensors|npz" "$work/err" || fail "no format hint: $(cat "$work/err")"
expect_exit 1 export --server="$a" --out="$work/y.npz" 'nosuch/*'
grep -q "no tensor matches nosuch/\*" "$work/err" || fail "$(cat "$work/err")"
[[ ! -e $work/x.bin && ! -e $work/y.npz ]] || fail "a refused export wrote a file"
echo "ok: a bad extension (exit 2) and a pattern matching nothing (exit 1) write nothing"

echo "--- 2. read by numpy and by an independent safetensors reader"
pycheck "$work/all.safetensors" "$work/all.npz" "$work/export_npz.json" \
  "$work/hidden.bin" <<'PY' || fail "the exported files do not check out"
import json, sys, zipfile
import numpy as np
from st import read_safetensors, same_bits
st_path, npz_path, export_json, hidden_path = sys.argv[1:]
st, metadata = read_safetensors(st_path)
npz = np.load(npz_path)
exported = json.load(open(export_json))
names = sorted(t["name"] for t in exported["tensors"])
assert sorted(st) == names, (sorted(st), names)
assert sorted(npz.files) == names, (npz.files, names)
assert metadata.get("format") == "pt", metadata
for t in exported["tensors"]:
    name = t["name"]
    assert metadata["weightd.version.%s" % name] == str(t["version"]), (name, metadata)
    a, b = st[name], npz[name]
    assert b.dtype == np.dtype("<f4") and list(b.shape) == t["shape"], (name, b.dtype, b.shape)
    assert same_bits(a, b), "%s differs between the two files" % name
    assert np.isfinite(a).all(), name
for info in zipfile.ZipFile(npz_path).infolist():
    assert info.compress_type == zipfile.ZIP_STORED, info
hidden = np.load(hidden_path)  # An .npz by --format, whatever its name.
assert sorted(hidden.files) == ["hidden/b", "hidden/w"], hidden.files
assert same_bits(hidden["hidden/w"], st["hidden/w"])
print("checked %d tensors, %d bytes" % (len(names), sum(a.nbytes for a in st.values())))
PY
echo "ok: np.load and the independent reader agree bit for bit; versions in __metadata__"

echo "--- 3. import into a fresh daemon, export again"
a_pid=$server_pid
start_weightd "$work/b.log" 127.0.0.1:0 --insecure
b=$address
expect_exit 0 import "$work/all.safetensors" --server="$b"
[[ $(grep -c ' created$' "$work/out") == 5 ]] ||
  fail "import did not create 5 tensors: $(cat "$work/out")"
grep -q "5 created (0 converted to float32), 0 kept" "$work/out" || fail "$(cat "$work/out")"
expect_exit 0 export --server="$b" --out="$work/b.safetensors"
expect_exit 0 import "$work/all.npz" --prefix=p/ --server="$b" --json
pycheck "$work/out" <<'PY' || fail "import --json: $(cat "$work/out")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["format"] == "npz" and d["created"] == 5 and d["kept"] == 0, d
assert all(t["name"] == "p/" + t["file_name"] and t["action"] == "created"
           for t in d["tensors"]), d
PY
expect_exit 0 export --server="$b" --out="$work/p.npz" 'p/*'
pycheck "$work/all.safetensors" "$work/b.safetensors" "$work/p.npz" <<'PY' ||
import sys
import numpy as np
from st import read_safetensors, same_bits
a, _ = read_safetensors(sys.argv[1])
b, metadata = read_safetensors(sys.argv[2])
p = np.load(sys.argv[3])
assert sorted(a) == sorted(b), (sorted(a), sorted(b))
assert sorted(p.files) == sorted("p/" + n for n in a), p.files
for name in a:
    assert same_bits(a[name], b[name]), "%s changed through import/export" % name
    assert same_bits(a[name], p["p/" + name]), "p/%s changed" % name
    assert metadata["weightd.version." + name] == "0", metadata
PY
  fail "the values did not survive import and export"
echo "ok: import then export is bit-identical (safetensors, and .npz under --prefix=p/)"

echo "--- 4. a shape conflict changes nothing; a same-shape tensor is kept"
$py - "$work" <<'PY'
import json, struct, sys
import numpy as np
def write(path, tensors):
    header, data = {}, b""
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + a.nbytes]}
        data += a.tobytes()
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    open(path, "wb").write(struct.pack("<Q", len(text)) + text + data)
work = sys.argv[1]
write(work + "/conflict.safetensors",
      {"new/a": np.ones(3), "hidden/w": np.zeros((2, 2)), "new/b": np.ones(2)})
write(work + "/same.safetensors",
      {"hidden/b": np.full(128, 7.0), "extra/t": np.arange(4.0)})
PY
expect_exit 0 status --server="$b"
cp "$work/out" "$work/status_before"
expect_exit 1 import "$work/conflict.safetensors" --server="$b"
grep -q "tensor hidden/w exists with shape \[784,128\]; the file's is \[2,2\]" "$work/err" ||
  fail "the conflict was not named: $(cat "$work/err")"
grep -q "nothing imported" "$work/err" || fail "$(cat "$work/err")"
expect_exit 0 status --server="$b"
diff "$work/status_before" "$work/out" >"$work/status.diff" ||
  fail "a refused import changed the server: $(cat "$work/status.diff")"
grep -q "new/a" "$work/out" && fail "new/a was created by a refused import"
echo "ok: the conflicting import exited 1 naming hidden/w; weightctl status unchanged"
expect_exit 0 import "$work/same.safetensors" --server="$b"
grep -qE '^hidden/b .*exists at version 0, kept \(drop it first to replace it\)$' "$work/out" ||
  fail "hidden/b not reported kept: $(cat "$work/out")"
grep -qE '^extra/t .* created$' "$work/out" || fail "extra/t not created: $(cat "$work/out")"
expect_exit 0 export --server="$b" --out="$work/after.safetensors" 'hidden/b' 'extra/*'
pycheck "$work/all.safetensors" "$work/after.safetensors" <<'PY' ||
import sys
import numpy as np
from st import read_safetensors, same_bits
a, _ = read_safetensors(sys.argv[1])
b, _ = read_safetensors(sys.argv[2])
assert same_bits(a["hidden/b"], b["hidden/b"]), "the kept hidden/b changed"
assert np.array_equal(b["extra/t"], np.arange(4, dtype=np.float32)), b["extra/t"]
PY
  fail "kept or created values are wrong"
echo "ok: same shape kept with its values, the other tensor created"

echo "--- 5. dtypes: int32 refused, float64 converted, garbage refused"
$py - "$work" <<'PY'
import sys
import numpy as np
work = sys.argv[1]
np.savez(work + "/int.npz", weights=np.ones(3, dtype=np.float32),
         steps=np.arange(3, dtype=np.int32))
np.savez_compressed(work + "/f64.npz", w=np.array([[0.1, -2.5], [1e-3, 3.0]]))
open(work + "/garbage.safetensors", "wb").write(b"\x20\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
PY
expect_exit 0 status --server="$b"
cp "$work/out" "$work/status_before"
expect_exit 2 import "$work/int.npz" --server="$b"
grep -q "tensor steps has dtype '<i4'" "$work/err" || fail "int32: $(cat "$work/err")"
expect_exit 2 import "$work/garbage.safetensors" --server="$b"
grep -q "truncated" "$work/err" || fail "garbage: $(cat "$work/err")"
expect_exit 0 status --server="$b"
diff "$work/status_before" "$work/out" >/dev/null || fail "a refused file changed the server"
echo "ok: int32 refused naming steps and '<i4'; a truncated file refused; nothing changed"
expect_exit 0 import "$work/f64.npz" --prefix=f64/ --server="$b"
grep -qE '^f64/w +\[2,2\] +F64 +created \(converted from F64\)$' "$work/out" ||
  fail "the conversion was not reported: $(cat "$work/out")"
expect_exit 0 export --server="$b" --out="$work/f64.safetensors" 'f64/*'
pycheck "$work/f64.safetensors" <<'PY' || fail "float64 did not convert to the nearest float32"
import sys
import numpy as np
from st import read_safetensors, same_bits
t, _ = read_safetensors(sys.argv[1])
want = np.array([[0.1, -2.5], [1e-3, 3.0]]).astype(np.float32)
assert same_bits(t["f64/w"], want), t["f64/w"]
PY
echo "ok: float64 imported as float32 (round to nearest), reported as converted from F64"

echo "--- 6. two shards: a tensor split by rows"
start_weightd "$work/s0.log" 127.0.0.1:0 --insecure --shard_index=0 --shard_count=2
s0=$address
start_weightd "$work/s1.log" 127.0.0.1:0 --insecure --shard_index=1 --shard_count=2
s1=$address
# Shard 1 first: the order of --server is free.
expect_exit 0 import "$work/all.safetensors" --server="$s1,$s0"
grep -q "5 created" "$work/out" || fail "import into the shards: $(cat "$work/out")"
for s in "$s0" "$s1"; do
  expect_exit 0 status --server="$s"
  grep -q "hidden/w \[392,128\]" "$work/out" ||
    fail "shard $s holds no row part of hidden/w: $(cat "$work/out")"
done
expect_exit 0 export --server="$s0,$s1" --out="$work/shards.safetensors"
grep -qE '^hidden/w +\[784,128\] +0 +401408$' "$work/out" ||
  fail "export from the shards lists no whole hidden/w: $(cat "$work/out")"
pycheck "$work/all.safetensors" "$work/shards.safetensors" <<'PY' ||
import sys
from st import read_safetensors, same_bits
a, _ = read_safetensors(sys.argv[1])
b, _ = read_safetensors(sys.argv[2])
assert sorted(a) == sorted(b), (sorted(a), sorted(b))
for name in a:
    assert same_bits(a[name], b[name]), "%s differs after the shards" % name
PY
  fail "the shards' export differs from the single server's"
echo "ok: each shard holds half of hidden/w's rows; export from both is bit-identical"
echo "PASS"
