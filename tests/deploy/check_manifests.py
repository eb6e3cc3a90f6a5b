#!/usr/bin/python3
"""Checks deploy/: the Kubernetes manifests and the Compose files (as
docker-compose resolved them) have the fields a deployment needs and agree
with each other, and the Dockerfile builds with the scripts CI runs and
ships every library the binaries link.

Usage: check_manifests.py REPO BUILD_DIR COMPOSE_JSON...
Each COMPOSE_JSON is `docker-compose -f F config` output (YAML) of F.
Prints one line per check; exits 1 on the first failure.
"""
import os
import re
import subprocess
import sys

import yaml

repo, build = sys.argv[1], sys.argv[2]
composed = sys.argv[3:]


def fail(why):
    print("FAIL:", why)
    sys.exit(1)


def ok(what):
    print("ok:", what)


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# --- Kubernetes ------------------------------------------------------------
docs = {}
for name in ("weightd.yaml", "workers.yaml"):
    with open(os.path.join(repo, "deploy", "k8s", name)) as f:
        for d in yaml.safe_load_all(f):
            for key in ("apiVersion", "kind", "metadata", "spec"):
                if key not in d:
                    fail("%s: a document without %s" % (name, key))
            docs[d["kind"]] = d
for kind in ("Service", "StatefulSet", "Job"):
    if kind not in docs:
        fail("deploy/k8s has no %s" % kind)
svc, sts, job = docs["Service"], docs["StatefulSet"], docs["Job"]
if svc["spec"].get("clusterIP") != "None":
    fail("the Service is not headless (clusterIP: None)")
if sts["spec"]["serviceName"] != svc["metadata"]["name"]:
    fail("StatefulSet.serviceName is not the headless Service")
sel = sts["spec"]["selector"]["matchLabels"]
if any(svc["spec"]["selector"].get(k) != v for k, v in sel.items()) or \
        any(sts["spec"]["template"]["metadata"]["labels"].get(k) != v
            for k, v in sel.items()):
    fail("Service selector, StatefulSet selector and pod labels disagree")
pod = sts["spec"]["template"]["spec"]
shard = pod["containers"][0]
env = env_of(shard)
replicas = sts["spec"]["replicas"]
if env.get("WEIGHTD_SHARD_INDEX") != "hostname":
    fail("shards do not take their index from the pod ordinal")
if int(env.get("WEIGHTD_SHARD_COUNT", "0")) != replicas:
    fail("WEIGHTD_SHARD_COUNT %s != replicas %d" %
         (env.get("WEIGHTD_SHARD_COUNT"), replicas))
port = shard["ports"][0]["containerPort"]
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    if shard.get(probe, {}).get("grpc", {}).get("port") != port:
        fail("%s is not a gRPC health probe on port %d" % (probe, port))


def budget(probe):
    """Seconds a failing probe takes to give up (Kubernetes' defaults)."""
    return probe.get("initialDelaySeconds", 0) + \
        probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


# A restore reports NOT_SERVING; only the startup probe may wait for it.
startup_s = budget(shard["startupProbe"])
if startup_s < 600:
    fail("the startupProbe gives a restore %d s, less than 10 min" % startup_s)
if budget(shard["livenessProbe"]) > 300:
    fail("the livenessProbe waits %d s: leave the start to the startupProbe"
         % budget(shard["livenessProbe"]))
claims = [c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])]
mounts = {m["name"]: m["mountPath"] for m in shard.get("volumeMounts", [])}
if not claims or claims[0] not in mounts or \
        not env.get("WEIGHTD_SNAPSHOT_DIR", "").startswith(mounts[claims[0]]):
    fail("snapshots are not on the per-shard PersistentVolumeClaim")
if not pod.get("securityContext", {}).get("runAsNonRoot"):
    fail("shards may run as root")
ok("StatefulSet of %d shards behind headless Service %s, gRPC startup "
   "(%d s), readiness and liveness probes, PVC per shard" %
   (replicas, svc["metadata"]["name"], startup_s))

jspec = job["spec"]
if jspec.get("completionMode") != "Indexed":
    fail("the worker Job is not an Indexed Job")
worker = jspec["template"]["spec"]["containers"][0]
args = worker.get("args", [])
if "--rank=$(JOB_COMPLETION_INDEX)" not in args:
    fail("workers do not take their rank from the completion index")
workers = [a for a in args if a.startswith("--workers=")]
if not workers or int(workers[0].split("=")[1]) != jspec["completions"]:
    fail("--workers does not match the Job's completions")
servers = env_of(worker).get("WEIGHTD_SERVERS", "").split(",")
want = ["%s-%d.%s:%d" % (sts["metadata"]["name"], i, svc["metadata"]["name"],
                         svc["spec"]["ports"][0]["port"]) for i in range(replicas)]
if sorted(servers) != sorted(want):
    fail("WEIGHTD_SERVERS %s is not every shard %s" % (servers, want))
ok("Indexed Job of %d workers naming all %d shards" %
   (jspec["completions"], replicas))

# Images: an explicit version, never :latest (with IfNotPresent a node keeps
# whichever :latest it pulled first); one version everywhere.
versions = {}


def image_version(where, image):
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or tag in ("", "latest"):
        fail("%s: image %s has no explicit version tag" % (where, image))
    versions.setdefault(tag, []).append(where)
    return name


k8s_images = {}
for kind, c in (("StatefulSet", shard), ("Job", worker)):
    k8s_images[kind] = image_version(kind, c["image"])
    if c.get("imagePullPolicy") not in ("IfNotPresent", "Always"):
        fail("%s: imagePullPolicy %s" % (kind, c.get("imagePullPolicy")))

# --- Compose ---------------------------------------------------------------
for path in composed:
    with open(path) as f:
        c = yaml.safe_load(f)
    services = c["services"]
    shards = {n: s for n, s in services.items() if n.startswith("weightd")}
    if "worker" not in services or not shards:
        fail("%s: needs weightd service(s) and a worker service" % path)
    count = len(shards)
    indices = set()
    for n, s in shards.items():
        e = s.get("environment", {})
        if "weightctl" not in " ".join(s.get("healthcheck", {}).get("test", [])):
            fail("%s: %s has no health check through weightctl" % (path, n))
        if s.get("restart") not in ("always", "unless-stopped", "on-failure"):
            fail("%s: %s has no restart policy" % (path, n))
        if not any(str(v).endswith(":/var/lib/weightd:rw") or
                   str(v).endswith(":/var/lib/weightd")
                   for v in s.get("volumes", [])):
            fail("%s: %s keeps no snapshot volume" % (path, n))
        if count > 1:
            if int(e.get("WEIGHTD_SHARD_COUNT", 0)) != count:
                fail("%s: %s says WEIGHTD_SHARD_COUNT=%s of %d shards" %
                     (path, n, e.get("WEIGHTD_SHARD_COUNT"), count))
            indices.add(int(e["WEIGHTD_SHARD_INDEX"]))
    if count > 1 and indices != set(range(count)):
        fail("%s: shard indices %s" % (path, sorted(indices)))
    w = services["worker"]
    named = w["environment"]["WEIGHTD_SERVERS"].split(",")
    if sorted(h.split(":")[0] for h in named) != sorted(shards):
        fail("%s: WEIGHTD_SERVERS %s is not the weightd services %s" %
             (path, named, sorted(shards)))
    if "--rank=-1" not in w.get("command", []):
        fail("%s: scaled workers need --rank=-1" % path)
    n = [a for a in w["command"] if a.startswith("--workers=")]
    replicas_c = w.get("deploy", {}).get("replicas")
    if not n or replicas_c is None or int(n[0].split("=")[1]) != int(replicas_c):
        fail("%s: worker --workers %s != deploy.replicas %s" %
             (path, n, replicas_c))
    for n_, s_ in list(shards.items()) + [("worker", w)]:
        image_version("%s %s" % (os.path.basename(path), n_), s_["image"])
    ok("%s: %d weightd service(s) with health checks, restart, volumes; "
       "worker names them all" % (os.path.basename(path), count))

if len(versions) != 1:
    fail("image versions differ: %s" % versions)
ok("images: one explicit version %s in deploy/k8s and the Compose files"
   % next(iter(versions)))

# The Compose files say that their snapshot volume resumes the last job, and
# take WEIGHTD_JOB for a new one.
for name in ("docker-compose.yml", "docker-compose.shards.yml"):
    with open(os.path.join(repo, "deploy", name)) as f:
        text = f.read()
    if "RESUMES" not in text or "down -v" not in text or \
            not re.search(r"WEIGHTD_SNAPSHOT_DIR: /var/lib/weightd/\$\{WEIGHTD_JOB:-",
                          text):
        fail("%s does not warn that `up` resumes the last job, or takes no "
             "WEIGHTD_JOB" % name)
ok("Compose files: snapshot directory per WEIGHTD_JOB; the resume is documented")

# The build context: no build trees or .git.
try:
    with open(os.path.join(repo, ".dockerignore")) as f:
        ignored = f.read().split()
except FileNotFoundError:
    fail("no .dockerignore: the build trees and .git go into the context")
for needed in (".git", "build"):
    if needed not in ignored:
        fail(".dockerignore does not exclude %s" % needed)
ok(".dockerignore keeps .git and build trees out of the build context")

# --- Dockerfile --------------------------------------------------------------
with open(os.path.join(repo, "deploy", "Dockerfile")) as f:
    dockerfile = f.read()
stages = {}
for m in re.finditer(r"^FROM (\S+) AS (\S+)$", dockerfile, re.M):
    stages[m.group(2)] = m.group(1)
if stages.get("build") != "debian:bookworm" or \
        stages.get("runtime") != "debian:bookworm-slim" or \
        not {"weightd", "worker"} <= set(stages):
    fail("Dockerfile stages %s" % stages)
if "scripts/install_deps.sh" not in dockerfile or "scripts/build.sh" not in dockerfile:
    fail("the Dockerfile does not build with the scripts CI runs")
for needed in ("HEALTHCHECK", "weightctl\", \"health", "VOLUME /var/lib/weightd",
               "USER weightd"):
    if needed not in dockerfile:
        fail("the Dockerfile lacks %s" % needed)
# Every library the binaries need comes from a package the runtime stage
# installs (or one those depend on, or the slim base).
runtime = dockerfile.split("AS runtime", 1)[1].split("FROM", 1)[0]
listed = re.findall(r"\b(lib[\w.+-]+|zlib1g|dataset-fashion-mnist)\b",
                    runtime.split("--no-install-recommends", 1)[1].split("&&")[0])
closure = set(subprocess.run(
    ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
     "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + listed,
    capture_output=True, text=True, check=True).stdout.split())
closure |= set(listed) | {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}
for binary in ("server/weightd", "tools/weightctl", "examples/weightd_worker"):
    path = os.path.join(build, binary)
    libs = subprocess.run(["ldd", path], capture_output=True, text=True,
                          check=True).stdout
    for line in libs.splitlines():
        m = re.search(r"=> (/\S+)", line)
        if not m:
            continue
        real = os.path.realpath(m.group(1))
        owner = subprocess.run(["dpkg", "-S", real], capture_output=True,
                               text=True)
        if owner.returncode != 0:  # /usr/lib vs /lib (merged /usr).
            owner = subprocess.run(["dpkg", "-S", real.replace("/usr/lib/", "/lib/", 1)],
                                   capture_output=True, text=True)
        pkg = owner.stdout.split(":")[0]
        if owner.returncode != 0 or pkg not in closure:
            fail("%s needs %s (%s), which the runtime image does not install"
                 % (binary, real, pkg or "no package"))
ok("Dockerfile: build stage runs install_deps.sh and build.sh; runtime "
   "installs %s, which provide every library of weightd, weightctl and "
   "weightd_worker" % " ".join(listed))
