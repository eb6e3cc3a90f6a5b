#!/usr/bin/python3
"""weightd on real links: every daemon and every worker runs on a "host" of
its own, a network namespace joined to one bridge by a veth pair whose two
ends' egress is shaped with tc (1 Gbit/s each way by default), so that the
links, not this machine's two cores, are the bottleneck, as between real
machines. The harness creates the namespaces and removes them when it ends
(or is interrupted); it needs root, and without namespaces it prints one
SKIP line and exits 77.

Baselines, measured in the same run on the same shaped links:
  B    one raw TCP stream over a link (a worker host to a daemon host): the
       link's real throughput;
  RTT  the round trip of a 4 KiB TCP message between those two hosts;
  T*   per scenario, the lower bound of a round: the bytes on the busiest
       link over B. With W workers, S shards and a model of M bytes each
       shard's link carries W*M/S each way per round and each worker's link
       M, so T* = max(W*M/S, M) / B.
Rows are prefixed "net" and have run_bench.py's format (table and
summary.json). For a round time the ratio is T*/time: 0.8 means 1.25 x T*.

Usage: net_bench.py --build build/release --out build/bench/net [--smoke]
       [--rate 1gbit] [--only 1,5] [--reps 5] [--daemon_flag=--flag=value]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_bench import MiB, Bench, gbps  # noqa: E402

PREFIX = "wdnet"        # Namespace names: wdnet<pid>-<host>.
SUBNET = "10.231.0"     # Inside the namespaces only: never routed out.
BURST = "256kb"         # tbf's bucket: above the largest (GSO) packet.
QUEUE = "20ms"          # tbf's queue, as time at the link's rate.


def run(argv):
    """Runs a setup command; exits with its error if it fails."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), p.stdout.strip()))
    return p.stdout


class Net:
    """One bridge (in a namespace of its own) and hosts on it, each a
    namespace with eth0 on SUBNET.n. Every link is shaped on both ends."""

    def __init__(self, rate):
        self.tag = "%s%d" % (PREFIX, os.getpid())
        self.rate = rate
        self.namespaces = []
        self.links = []  # (namespace, device): both ends of every link.
        self.switch = self._namespace("switch")
        run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        self.hosts = {}  # name -> (namespace, address)

    def _namespace(self, name):
        ns = "%s-%s" % (self.tag, name)
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def add_host(self, name):
        ns = self._namespace(name)
        n = len(self.hosts) + 1
        port = "p%d" % n
        # Created in place: no interface appears in this namespace.
        run(["ip", "link", "add", port, "netns", self.switch, "type", "veth",
             "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", self.switch, "link", "set", port, "master", "br0",
             "up"])
        run(["ip", "-n", ns, "addr", "add", "%s.%d/24" % (SUBNET, n), "dev",
             "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        self.links += [(ns, "eth0"), (self.switch, port)]
        self._shape(ns, "eth0")
        self._shape(self.switch, port)
        self.hosts[name] = (ns, "%s.%d" % (SUBNET, n))
        return self.hosts[name]

    def _shape(self, ns, dev):
        run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate",
             self.rate, "burst", BURST, "latency", QUEUE])

    def enter(self, name):
        """argv prefix that runs a program on host `name` (nsenter execs
        it: the same pid, so its memory can be read)."""
        return ["nsenter", "--net=/run/netns/" + self.hosts[name][0], "--"]

    def close(self):
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.namespaces = []


def remove_stale():
    """Deletes the namespaces of earlier runs whose process is gone (a run
    killed with -9 cannot remove its own)."""
    listing = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX) or "-" not in name:
            continue
        pid = name[len(PREFIX):name.index("-")]
        if pid.isdigit() and not os.path.exists("/proc/" + pid):
            subprocess.run(["ip", "netns", "del", name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def skip_reason():
    """Why this machine cannot run the harness, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "nsenter"):
        if shutil.which(tool) is None:
            return "%s is not installed" % tool
    return None


# A TCP relay that delays every byte by DELAY seconds each way, pipelined
# (a delay, not a rate limit): "relay LISTEN_HOST TARGET_HOST TARGET_PORT
# DELAY" prints its port and serves until killed.
RELAY = r"""
import asyncio, socket, sys, time
listen, host, port, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
async def pipe(reader, writer):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    async def read():
        while True:
            data = await reader.read(1 << 20)
            await queue.put((loop.time() + delay, data))
            if not data:
                return
    async def write():
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()
    await asyncio.gather(read(), write(), return_exceptions=True)
async def serve(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    for w in (client_writer, server_writer):
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await asyncio.gather(pipe(client_reader, server_writer),
                         pipe(server_reader, client_writer),
                         return_exceptions=True)
async def main():
    server = await asyncio.start_server(serve, listen, 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


class Relay:
    """RELAY on host `on`, in front of `target` (HOST:PORT)."""

    def __init__(self, net, on, target, delay):
        host, port = target.rsplit(":", 1)
        self.proc = subprocess.Popen(
            net.enter(on) + [sys.executable, "-c", RELAY, net.hosts[on][1],
                             host, port, str(delay)],
            stdout=subprocess.PIPE, text=True)
        port = self.proc.stdout.readline().strip()
        if not port.isdigit():
            self.close()
            raise RuntimeError("the delay relay on %s did not start" % on)
        self.address = "%s:%s" % (net.hosts[on][1], port)

    def close(self):
        self.proc.kill()
        self.proc.wait()


class Hosts:
    """Bench's placement (run_bench.Local's interface): daemon i on host
    s<i>, worker r on host w<r>; with a `delay` (seconds each way), workers
    dial each daemon through a Relay on its host."""

    def __init__(self, net):
        self.net = net
        self.delay = 0.0
        self.relays = []

    def server(self, index):
        return self.net.enter("s%d" % index), self.net.hosts["s%d" % index][1]

    def worker(self, rank):
        return self.net.enter("w%d" % rank)

    def dial(self, address):
        if not self.delay:
            return address
        on = next(name for name, (_, ip) in self.net.hosts.items()
                  if address.startswith(ip + ":"))
        self.relays.append(Relay(self.net, on, address, self.delay))
        return self.relays[-1].address

    def close_relays(self):
        for r in self.relays:
            r.close()
        self.relays = []


# A raw TCP pair for the baselines: "sink HOST" listens (prints its port),
# "stream ADDR PORT BYTES REPS" sends BYTES per repetition and waits for the
# sink's 1-byte acknowledgement; "ping ADDR PORT BYTES REPS" sends BYTES and
# waits for BYTES back. Each measured repetition prints {"secs": s}.
TCP_PAIR = r"""
import json, socket, sys, time
mode = sys.argv[1]
def recv_exactly(s, n, keep=False):
    got = bytearray()
    while n > 0:
        b = s.recv(min(n, 1 << 20))
        if not b:
            sys.exit(0)
        if keep:
            got += b
        n -= len(b)
    return bytes(got)
if mode == "sink":
    l = socket.socket()
    l.bind((sys.argv[2], 0))
    l.listen(1)
    print(l.getsockname()[1], flush=True)
    l.settimeout(60)
    s, _ = l.accept()
    s.settimeout(120)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = recv_exactly(s, 64, keep=True).decode().split()
    n, answer = int(header[0]), int(header[1])
    s.sendall(b"k")
    while True:
        recv_exactly(s, n)
        s.sendall(b"\0" * answer)
else:
    addr, port, n, reps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    answer = n if mode == "ping" else 1
    s = socket.create_connection((addr, port), timeout=60)
    s.settimeout(120)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(("%d %d" % (n, answer)).ljust(64).encode())
    recv_exactly(s, 1)
    data = memoryview(bytearray(n))
    for rep in range(-1, reps):
        start = time.monotonic()
        for i in range(0, n, 1 << 20):
            s.sendall(data[i:i + (1 << 20)])
        recv_exactly(s, answer)
        if rep >= 0:
            print(json.dumps({"secs": time.monotonic() - start}), flush=True)
"""


def tcp_pair(net, mode, nbytes, reps, client="w0", server="s0", delay=0.0):
    """Seconds of each repetition of `mode` (stream or ping) from host
    `client` to host `server` (through a Relay there, with a `delay`)."""
    sink = subprocess.Popen(
        net.enter(server) + [sys.executable, "-c", TCP_PAIR, "sink",
                             net.hosts[server][1]],
        stdout=subprocess.PIPE, text=True)
    relay = None
    try:
        port = sink.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError("the TCP sink on %s did not start" % server)
        address = "%s:%s" % (net.hosts[server][1], port)
        if delay:
            relay = Relay(net, server, address, delay)
            address = relay.address
        host, port = address.rsplit(":", 1)
        out = subprocess.run(
            net.enter(client) + [sys.executable, "-c", TCP_PAIR, mode, host,
                                 port, str(nbytes), str(reps)],
            stdout=subprocess.PIPE, text=True, timeout=600, check=True).stdout
        return [json.loads(l)["secs"] for l in out.splitlines()]
    finally:
        if relay:
            relay.close()
        sink.kill()
        sink.wait()


# The traffic of a round, as raw TCP (tcp_mesh). "sink HOST COUNT" accepts
# COUNT streams (prints its port); each sends a 32-byte length, then that
# many bytes, and gets one byte back. "send START NBYTES ADDR:PORT..."
# connects to every sink, waits until the wall-clock time START, sends
# NBYTES on every connection at once (a thread each) and prints the
# seconds from START until the last acknowledgement.
MESH = r"""
import json, socket, sys, threading, time
def recv_exactly(s, n):
    got = bytearray()
    while len(got) < n:
        b = s.recv(min(n - len(got), 1 << 20))
        if not b:
            raise SystemExit("mesh: a peer closed early")
        if n <= 64:
            got += b
        else:
            n -= len(b)
    return bytes(got)
if sys.argv[1] == "sink":
    l = socket.socket()
    l.bind((sys.argv[2], 0))
    l.listen(128)
    print(l.getsockname()[1], flush=True)
    l.settimeout(120)
    def serve(s):
        s.settimeout(300)
        n = int(recv_exactly(s, 32).decode())
        recv_exactly(s, n)
        s.sendall(b"k")
    threads = []
    for _ in range(int(sys.argv[3])):
        s, _ = l.accept()
        threads.append(threading.Thread(target=serve, args=(s,)))
        threads[-1].start()
    for t in threads:
        t.join()
else:
    start, n = float(sys.argv[2]), int(sys.argv[3])
    conns = []
    for target in sys.argv[4:]:
        host, port = target.rsplit(":", 1)
        c = socket.create_connection((host, int(port)), timeout=60)
        c.settimeout(300)
        conns.append(c)
    data = memoryview(bytearray(n))
    done = []
    def send(c):
        c.sendall(str(n).ljust(32).encode())
        for i in range(0, n, 1 << 20):
            c.sendall(data[i:i + (1 << 20)])
        recv_exactly(c, 1)
        done.append(time.time())
    time.sleep(max(0.0, start - time.time()))
    threads = [threading.Thread(target=send, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"secs": max(done) - start}), flush=True)
"""


def tcp_mesh(net, workers, shards, nbytes, runs):
    """Seconds, per run, that raw TCP needs to move a round's bytes over the
    same links at once: every worker host sends nbytes / shards to every
    daemon host and every daemon host the same back, all starting at one
    instant (2 x W x S streams; a process per host and direction)."""
    each = max(nbytes // shards, 1)
    worker_hosts = ["w%d" % r for r in range(workers)]
    shard_hosts = ["s%d" % i for i in range(shards)]
    times = []
    for _ in range(runs):
        procs = []
        try:
            sinks = {}
            for host, incoming in ([(h, shards) for h in worker_hosts] +
                                   [(h, workers) for h in shard_hosts]):
                sink = subprocess.Popen(
                    net.enter(host) + [sys.executable, "-c", MESH, "sink",
                                       net.hosts[host][1], str(incoming)],
                    stdout=subprocess.PIPE, text=True)
                procs.append(sink)
                port = sink.stdout.readline().strip()
                if not port.isdigit():
                    raise RuntimeError("a mesh sink on %s did not start" % host)
                sinks[host] = "%s:%s" % (net.hosts[host][1], port)
            start = time.time() + 2.0 + 0.05 * (workers + shards)
            senders = []
            for host, peers in ([(h, shard_hosts) for h in worker_hosts] +
                                [(h, worker_hosts) for h in shard_hosts]):
                senders.append(subprocess.Popen(
                    net.enter(host) + [sys.executable, "-c", MESH, "send",
                                       repr(start), str(each)] +
                    [sinks[p] for p in peers],
                    stdout=subprocess.PIPE, text=True))
            procs += senders
            slowest = 0.0
            for p in senders:
                out, _ = p.communicate(timeout=600)
                if p.returncode != 0:
                    raise RuntimeError("a mesh sender failed")
                slowest = max(slowest, json.loads(out)["secs"])
            times.append(slowest)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--out", default="build/bench/net")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, a few rounds: checks the harness only")
    ap.add_argument("--rate", default="1gbit",
                    help="every link's rate each way (tc's units)")
    ap.add_argument("--delay_ms", type=float, default=1.0,
                    help="scenario 5: each link's delay; a host-to-host "
                         "message crosses two links")
    ap.add_argument("--reps", type=int, default=0,
                    help="measured rounds per scenario (default 5; smoke 2)")
    ap.add_argument("--daemon_flag", action="append", default=[],
                    help="a flag added to every weightd's command line, "
                         "e.g. --daemon_flag=--pace_pushes=false (repeat "
                         "for more)")
    ap.add_argument("--only", default="",
                    help="comma-separated scenario numbers (default: all); "
                         "2 and 3 run scenario 1 for their baseline")
    args = ap.parse_args()
    only = {int(n) for n in args.only.split(",") if n}

    def want(n):
        return not only or n in only

    reason = skip_reason()
    if reason:
        print("SKIP: " + reason, flush=True)
        sys.exit(77)
    # SIGTERM (a ctest timeout) unwinds like Ctrl-C, so that the namespaces
    # are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("net_bench: SIGTERM"))
    remove_stale()
    try:
        net = Net(args.rate)
    except RuntimeError as e:
        print("SKIP: cannot create namespaces joined by a bridge: %s" % e,
              flush=True)
        sys.exit(77)
    try:
        bench(net, args, want)
    finally:
        net.close()


def bench(net, args, want):
    smoke = args.smoke
    reps = args.reps or (2 if smoke else 5)
    size = 1 * MiB if smoke else 100 * MiB
    max_shards, max_workers = 4, 16
    for i in range(max_shards):
        net.add_host("s%d" % i)
    for r in range(max_workers):
        net.add_host("w%d" % r)
    b = Bench(args.build, smoke, reps, hosts=Hosts(net))
    b.daemon_args = args.daemon_flag
    print("net: %d hosts on one bridge, every link %s each way" % (
        max_shards + max_workers, args.rate), flush=True)

    # B: one raw TCP stream over one link.
    link = statistics.median(gbps(size, tcp_pair(net, "stream", size, reps)))
    print("net: B = %.4g GB/s (one TCP stream, worker host to daemon host)" %
          link, flush=True)

    def t_star(workers, shards, nbytes):
        return max(workers * nbytes / shards, nbytes) / (link * 1e9)

    def round_row(name, workers, shards, nbytes, times, note=""):
        t = t_star(workers, shards, nbytes)
        b.row("net%s W=%d S=%d round time" % (name, workers, shards), workers,
              nbytes, times, "s", "T* = max(W*M/S, M) / B", t, 0.8,
              lower_is_better=True, note=note)
        return statistics.median(gbps(nbytes, times))

    def mesh_row(name, workers, shards, nbytes, times):
        """The round against raw TCP moving its bytes over the same links
        at once (tcp_mesh): where the links stop being the bottleneck
        (every link busy at once is more traffic than two cores carry
        through the kernel's bridge), T* is out of reach and this says by
        how much."""
        mesh = statistics.median(tcp_mesh(net, workers, shards, nbytes,
                                          1 if smoke else 3))
        b.row("net%s W=%d S=%d vs raw TCP, same bytes at once" % (
                  name, workers, shards), workers, nbytes, times, "s",
              "raw TCP mesh %.3g s = %.2f x T*" % (
                  mesh, mesh / t_star(workers, shards, nbytes)),
              mesh, None, lower_is_better=True)

    # 1. W=4, S=1, 100 MiB float32.
    if want(1) or want(2) or want(3):
        times, _ = b.rounds(4, "single", size)
        s1 = round_row("1", 4, 1, size, times)
    # 2. The same in bfloat16 on the wire: half the bytes.
    if want(2):
        times, _ = b.rounds(4, "single", size, wire_format="bfloat16")
        b.row("net2 W=4 S=1 bfloat16 algorithmic bandwidth", 4, size,
              gbps(size, times), "GB/s", "net1 (float32)", s1, 1.8)
    # 3. More shards, each on its own host: S x the bandwidth until the
    # workers' own links are the bottleneck (W*M/S = M at S = W).
    if want(3):
        for shards in (2,) if smoke else (2, 4):
            times, _ = b.rounds(4, "single", size, shards=shards,
                                split_bytes=256 << 10 if smoke else None)
            algbw = round_row("3", 4, shards, size, times)
            if shards == 4 or smoke:
                mesh_row("3", 4, shards, size, times)
            if shards < 4:
                b.row("net3 W=4 S=%d algorithmic bandwidth" % shards, 4, size,
                      [algbw], "GB/s", "S x net1", shards * s1, 0.8)
    # 4. A real model's shapes and many small tensors over two shards.
    if want(4):
        if not smoke:
            times, _ = b.rounds(4, "resnet", shards=2)
            round_row("4 resnet50 (161 tensors)", 4, 2, 25557032 * 4, times,
                      note="T* as if the shards held equal halves")
        count = 100 if smoke else 10000
        times, _ = b.rounds(4, "many", count * 4096, count=count, shards=2)
        round_row("4 %d x 4 KiB" % count, 4, 2, count * 4096, times,
                  note="T* as if the shards held equal halves")
    # 5. Latency of a tiny round on links with a real delay. This kernel
    # has no netem (tc: "Specified qdisc kind is unknown"), so the delay is
    # a relay on the daemon's host that holds every byte for two links'
    # delay each way; the RTT baseline goes through the same relay.
    if want(5):
        lat_reps = 20 if smoke else 200
        flat, _ = b.rounds(4, "single", 4096, reps=lat_reps)
        delay = 2 * args.delay_ms / 1e3
        rtt = statistics.median(tcp_pair(net, "ping", 4096, lat_reps,
                                         delay=delay))
        b.hosts.delay = delay
        try:
            slow, _ = b.rounds(4, "single", 4096, reps=lat_reps)
        finally:
            b.hosts.delay = 0.0
            b.hosts.close_relays()
        flat_p50 = statistics.median(flat)
        b.row("net5 W=4 S=1 4 KiB round p50, %g ms a link" % args.delay_ms,
              4, 4096, [t * 1e3 for t in slow], "ms",
              "RTT %.3g ms + 1.5 x p50 without delay %.3g ms" % (
                  rtt * 1e3, flat_p50 * 1e3),
              (rtt + 1.5 * flat_p50) * 1e3, 1.0, lower_is_better=True)
    # 6. Sixteen workers over four shards.
    if want(6):
        per_worker, _ = b.rounds(16, "single", size, shards=4, per_worker=True,
                                 split_bytes=256 << 10 if smoke else None)
        medians = [statistics.median(w) for w in per_worker]
        round_row("6", 16, 4, size, b.slowest(per_worker),
                  note="per-worker median round %.3g-%.3g s" % (
                      min(medians), max(medians)))
        b.rows[-1]["worker_medians"] = medians
        mesh_row("6", 16, 4, size, b.slowest(per_worker))

    b.report(args.out)


if __name__ == "__main__":
    main()
