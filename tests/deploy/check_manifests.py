#!/usr/bin/python3
"""Checks deploy/: the Kubernetes manifests and the Compose files (as
docker-compose resolved them) have the fields a deployment needs and agree
with each other (metrics included: every daemon serves them, the Compose
Prometheus scrapes every daemon, Kubernetes names the port), and the
Dockerfile builds with the scripts CI runs and ships every library the
binaries link.

Usage: check_manifests.py REPO BUILD_DIR SECRETS COMPOSE_JSON...
SECRETS is a directory scripts/dev_secrets.sh filled: every secret file the
deployments name must be one it makes. Each COMPOSE_JSON is
`docker-compose -f F config` output (YAML) of F.
Prints one line per check; exits 1 on the first failure.
"""
import os
import re
import subprocess
import sys

import yaml

repo, build, secrets = sys.argv[1], sys.argv[2], sys.argv[3]
composed = sys.argv[4:]
made = set(os.listdir(secrets))


def fail(why):
    print("FAIL:", why)
    sys.exit(1)


def ok(what):
    print("ok:", what)


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def listen_port(where, flags):
    """The port of --metrics_listen=0.0.0.0:PORT in `flags`."""
    addr = flags.get("metrics_listen")
    if not addr:
        fail("%s runs without --metrics_listen: nothing can scrape it" % where)
    host, _, p = addr.rpartition(":")
    if host != "0.0.0.0" or not p.isdigit() or int(p) == 0:
        fail("%s: --metrics_listen=%s, not 0.0.0.0:PORT (a fixed port other "
             "containers reach)" % (where, addr))
    return int(p)


def flags_of(args):
    """{flag: value} of the --flag=value arguments (a bare --flag: "")."""
    return dict((a[2:].split("=", 1) + [""])[:2] for a in args
                if a.startswith("--"))


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


def mounted_secrets(pod, container):
    """{mount path: secret name} of the container's secret volumes."""
    volumes = {v["name"]: v["secret"]["secretName"]
               for v in pod.get("volumes", []) if "secret" in v}
    return {m["mountPath"]: volumes[m["name"]]
            for m in container.get("volumeMounts", []) if m["name"] in volumes}


def secret_of(mounts, path, where):
    """The secret a file path is read from, and the file's name in it."""
    for mount, secret in mounts.items():
        if path.startswith(mount + "/"):
            return secret, path[len(mount) + 1:]
    fail("%s: %s is on no secret volume" % (where, path))


# TLS and the policy from secret volumes, as flags: the probes' weightctl
# would take WEIGHTD_TLS_* variables for its own.
shard_mounts = mounted_secrets(pod, shard)


shard_args = flags_of(shard.get("args", []))
needs = {}  # secret name -> files the pods read from it
for flag in ("tls_cert", "tls_key", "auth_policy"):
    if flag not in shard_args:
        fail("the shards are not given --%s" % flag)
    secret, name = secret_of(shard_mounts, shard_args[flag], "--" + flag)
    needs.setdefault(secret, set()).add(name)
if any(k.startswith("WEIGHTD_TLS_") for k in env):
    fail("the shards' WEIGHTD_TLS_* variables would be weightctl's too")
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    command = shard.get(probe, {}).get("exec", {}).get("command", [])
    if command[:2] != ["weightctl", "health"] or \
            "--server=127.0.0.1:%d" % port not in command:
        fail("%s does not run weightctl health on port %d" % (probe, port))
    ca = [a for a in command if a.startswith("--tls_ca=")]
    if not ca:
        fail("%s does not trust the CA (--tls_ca): the listener serves TLS" % probe)
    secret, name = secret_of(shard_mounts, ca[0].split("=", 1)[1], probe)
    needs.setdefault(secret, set()).add(name)
    if shard[probe].get("timeoutSeconds", 1) < 3:
        fail("%s: weightctl gets %d s (timeoutSeconds)" %
             (probe, shard[probe].get("timeoutSeconds", 1)))


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
ok("StatefulSet of %d shards behind headless Service %s, health startup "
   "(%d s), readiness and liveness probes, PVC per shard" %
   (replicas, svc["metadata"]["name"], startup_s))

# Metrics: the shards serve them on a named port the Service names too,
# and the pods carry the prometheus.io/* annotations for it.
metrics_port = listen_port("the StatefulSet's shards", shard_args)
cports = {p_["name"]: p_["containerPort"] for p_ in shard["ports"]}
if cports.get("metrics") != metrics_port or metrics_port == port:
    fail("the shards' container port \"metrics\" is %s, not --metrics_listen's "
         "%d (gRPC: %d)" % (cports.get("metrics"), metrics_port, port))
sports = {p_["name"]: p_ for p_ in svc["spec"]["ports"]}
if sports.get("metrics", {}).get("targetPort") not in ("metrics", metrics_port):
    fail("the Service has no port \"metrics\" to the shards' metrics port")
annotations = sts["spec"]["template"]["metadata"].get("annotations", {})
want_ann = {"prometheus.io/scrape": "true", "prometheus.io/port": str(metrics_port),
            "prometheus.io/path": "/metrics"}
for k, v in want_ann.items():
    if annotations.get(k) != v:
        fail("the shards' pod annotation %s is %r, not %r" %
             (k, annotations.get(k), v))
# The examples beside them (not in the kustomization): a ServiceMonitor on
# the Service's metrics port, and a NetworkPolicy that lets only a named
# scraper reach it while gRPC stays open.
with open(os.path.join(repo, "deploy", "k8s", "servicemonitor.yaml")) as f:
    smon = yaml.safe_load(f)
if smon.get("kind") != "ServiceMonitor" or \
        any(svc["metadata"]["labels"].get(k) != v
            for k, v in smon["spec"]["selector"]["matchLabels"].items()):
    fail("servicemonitor.yaml: not a ServiceMonitor selecting Service %s" %
         svc["metadata"]["name"])
for e in smon["spec"]["endpoints"]:
    if e.get("port") not in sports or e.get("port") != "metrics" or \
            e.get("path", "/metrics") != "/metrics":
        fail("servicemonitor.yaml: endpoint %s is not the Service's metrics port" % e)
with open(os.path.join(repo, "deploy", "k8s", "networkpolicy.yaml")) as f:
    npol = yaml.safe_load(f)
plabels = sts["spec"]["template"]["metadata"]["labels"]
if npol.get("kind") != "NetworkPolicy" or \
        any(plabels.get(k) != v for k, v in
            npol["spec"]["podSelector"]["matchLabels"].items()) or \
        "Ingress" not in npol["spec"].get("policyTypes", []):
    fail("networkpolicy.yaml: not an Ingress NetworkPolicy on the shards' pods")


def allows(rule, number, name):
    return not rule.get("ports") or any(
        p_.get("port") in (number, name) for p_ in rule["ports"])


ingress = npol["spec"].get("ingress", [])
if not any(allows(r, port, "grpc") for r in ingress):
    fail("networkpolicy.yaml cuts the workers off gRPC port %d" % port)
for r in ingress:
    if allows(r, metrics_port, "metrics") and not r.get("from"):
        fail("networkpolicy.yaml lets anyone reach the metrics port %d: %s"
             % (metrics_port, r))
if not any(allows(r, metrics_port, "metrics") for r in ingress):
    fail("networkpolicy.yaml lets nobody scrape port %d" % metrics_port)
ok("Kubernetes metrics: --metrics_listen on port \"metrics\" %d, in the "
   "Service, prometheus.io/* pod annotations; servicemonitor.yaml scrapes it; "
   "networkpolicy.yaml lets only its `from` reach it, gRPC open" % metrics_port)

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
worker_mounts = mounted_secrets(jspec["template"]["spec"], worker)
for var in ("WEIGHTD_TLS_CA", "WEIGHTD_TOKEN_FILE"):
    path = env_of(worker).get(var)
    if not path:
        fail("the workers are given no %s" % var)
    secret, name = secret_of(worker_mounts, path, var)
    needs.setdefault(secret, set()).add(name)
for p_, c_ in ((pod, "StatefulSet"), (jspec["template"]["spec"], "Job")):
    if p_.get("securityContext", {}).get("fsGroup") is None:
        fail("%s: no fsGroup, its user cannot read secret volumes of mode 0440" % c_)

# deploy/kustomization.yaml makes each of those secrets from the files
# scripts/dev_secrets.sh writes, under fixed names (rotation in place).
with open(os.path.join(repo, "deploy", "kustomization.yaml")) as f:
    kust = yaml.safe_load(f)
# The ServiceMonitor is a custom resource: `kubectl apply -k deploy` would
# fail on a cluster without the Prometheus Operator.
if sorted(kust["resources"]) != ["k8s/weightd.yaml", "k8s/workers.yaml"]:
    fail("kustomization resources %s" % kust["resources"])
if not kust.get("generatorOptions", {}).get("disableNameSuffixHash"):
    fail("generated secrets get a hash suffix: a renewal would need a rollout")
generated = {}
for g in kust["secretGenerator"]:
    files = set()
    for f_ in g["files"]:
        if not f_.startswith("secrets/") or f_[len("secrets/"):] not in made:
            fail("secret %s: %s is not a file scripts/dev_secrets.sh makes" %
                 (g["name"], f_))
        files.add(f_[len("secrets/"):])
    generated[g["name"]] = files
for secret, names in needs.items():
    if not names <= generated.get(secret, set()):
        fail("the pods read %s from secret %s, which holds %s" %
             (sorted(names), secret, sorted(generated.get(secret, set()))))
if "ca.key" in set().union(*generated.values()) or \
        "admin.token" in set().union(*generated.values()):
    fail("the CA's key or the admin token goes into the cluster")
ok("Kubernetes: TLS, policy and probes' CA from secret volumes; workers "
   "trust the CA and send worker.token; kustomization makes %s"
   % ", ".join(sorted(generated)))

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
build_targets = set()


def container_port(spec):
    """The container port of a Compose `ports` entry (as docker-compose
    config prints it: "[IP:]HOST:CONTAINER/tcp", or a long-syntax dict)."""
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).split("/")[0].rsplit(":", 1)[-1].split("-")[0])


for path in composed:
    with open(path) as f:
        c = yaml.safe_load(f)
    services = c["services"]
    shards = {n: s for n, s in services.items() if n.startswith("weightd")}
    if "worker" not in services or not shards:
        fail("%s: needs weightd service(s) and a worker service" % path)
    count = len(shards)
    indices = set()
    declared = {name: os.path.basename(d["file"])
                for name, d in c.get("secrets", {}).items()}
    for name, f_ in declared.items():
        if f_ not in made:
            fail("%s: secret %s is %s, not a file scripts/dev_secrets.sh makes"
                 % (path, name, f_))

    def secret_file(service, where, arg):
        """The dev_secrets.sh file behind /run/secrets/NAME in `arg`."""
        name = arg.split("=", 1)[1]
        if not name.startswith("/run/secrets/"):
            fail("%s: %s %s is not a secret" % (path, where, arg))
        name = name[len("/run/secrets/"):]
        have = [x if isinstance(x, str) else x["source"]
                for x in service.get("secrets", [])]
        if name not in have or name not in declared:
            fail("%s: %s reads secret %s, which it is not given" %
                 (path, where, name))
        return declared[name]

    for s in services.values():
        if s.get("build", {}).get("target"):
            build_targets.add(s["build"]["target"])
    shard_metrics = {}
    for n, s in shards.items():
        e = s.get("environment", {})
        # Metrics on a fixed port of the Compose network, never published:
        # /metrics is plaintext HTTP without authentication.
        shard_metrics[n] = listen_port("%s: %s" % (path, n),
                                       flags_of(s.get("command", [])))
        published = [p_ for p_ in s.get("ports", [])
                     if container_port(p_) == shard_metrics[n]]
        if published:
            fail("%s: %s publishes its plaintext metrics port: %s" %
                 (path, n, published))
        test = s.get("healthcheck", {}).get("test", [])
        if "weightctl" not in " ".join(test):
            fail("%s: %s has no health check through weightctl" % (path, n))
        ca = [a for a in test if a.startswith("--tls_ca=")]
        if not ca or secret_file(s, n + " healthcheck", ca[0]) != "ca.crt":
            fail("%s: %s's health check does not trust ca.crt" % (path, n))
        args = flags_of(s.get("command", []))
        # The check's weightctl must get its answer before the check times
        # out (docker-compose config prints the timeout as e.g. "5s").
        check_s = float(str(s["healthcheck"].get("timeout", "30s")).rstrip("s"))
        ctl_s = float(flags_of(test).get("timeout", "5s").rstrip("s"))
        if ctl_s >= check_s:
            fail("%s: %s's health check times out after %gs, before its "
                 "weightctl (--timeout=%gs)" % (path, n, check_s, ctl_s))
        for flag, want in (("tls_cert", "tls.crt"), ("tls_key", "tls.key"),
                           ("auth_policy", "policy.json")):
            if flag not in args or \
                    secret_file(s, n, "--%s=%s" % (flag, args[flag])) != want:
                fail("%s: %s does not serve --%s from %s" % (path, n, flag, want))
        if any(k.startswith("WEIGHTD_TLS_") for k in e):
            fail("%s: %s's WEIGHTD_TLS_* would be its healthcheck's too" % (path, n))
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
    we = w["environment"]
    for var, want in (("WEIGHTD_TLS_CA", "ca.crt"),
                      ("WEIGHTD_TOKEN_FILE", "worker.token")):
        if var not in we or secret_file(w, "worker " + var,
                                        "%s=%s" % (var, we[var])) != want:
            fail("%s: the workers' %s is not %s" % (path, var, want))
    if "--rank=-1" not in w.get("command", []):
        fail("%s: scaled workers need --rank=-1" % path)
    n = [a for a in w["command"] if a.startswith("--workers=")]
    replicas_c = w.get("deploy", {}).get("replicas")
    if not n or replicas_c is None or int(n[0].split("=")[1]) != int(replicas_c):
        fail("%s: worker --workers %s != deploy.replicas %s" %
             (path, n, replicas_c))
    # The prometheus service scrapes every daemon by its service name, and
    # loads the alert rules; its UI/API only on the host's loopback.
    if "prometheus" not in services:
        fail("%s: no prometheus service" % path)
    prom = services["prometheus"]
    for p_ in prom.get("ports", []):
        ip = p_.get("host_ip") if isinstance(p_, dict) else \
            (str(p_).split(":")[0] if str(p_).count(":") == 2 else None)
        if ip != "127.0.0.1":
            fail("%s: prometheus publishes %s beyond 127.0.0.1" % (path, p_))
    config = flags_of(prom.get("command", [])).get("config.file")
    if not config:
        fail("%s: prometheus is given no --config.file" % path)
    host_config = None
    for v in prom.get("volumes", []):
        parts = v.split(":") if isinstance(v, str) else [v["source"], v["target"]]
        src, dst = parts[0], parts[1]
        if os.path.isabs(src) and config.startswith(dst.rstrip("/") + "/"):
            host_config = os.path.join(src, config[len(dst.rstrip("/")) + 1:])
    if not host_config or not os.path.isfile(host_config):
        fail("%s: prometheus's %s is no file mounted from the host" %
             (path, config))
    with open(host_config) as f:
        pconf = yaml.safe_load(f)
    rules = [os.path.normpath(os.path.join(os.path.dirname(host_config), r))
             for r in pconf.get("rule_files", [])]
    if os.path.join(repo, "deploy", "prometheus", "alerts.yml") not in rules:
        fail("%s: %s does not load deploy/prometheus/alerts.yml (%s)" %
             (path, host_config, rules))
    targets = {}
    for job_ in pconf.get("scrape_configs", []):
        for sc in job_.get("static_configs", []):
            for t in sc.get("targets", []):
                targets[t] = job_["job_name"]
    want_t = {"%s:%d" % (n, p_) for n, p_ in shard_metrics.items()}
    if set(targets) != want_t:
        fail("%s: %s scrapes %s, not every daemon's metrics port %s" %
             (path, os.path.basename(host_config), sorted(targets),
              sorted(want_t)))
    if any(not j.startswith("weightd") for j in targets.values()):
        fail("%s: the alerts match job=~\"weightd.*\"; %s scrapes them as %s"
             % (path, os.path.basename(host_config), sorted(set(targets.values()))))
    for n_, s_ in list(shards.items()) + [("worker", w), ("prometheus", prom)]:
        image_version("%s %s" % (os.path.basename(path), n_), s_["image"])
    ok("%s: %d weightd service(s) serving TLS and the policy from secrets, "
       "with health checks, restart, volumes, unpublished metrics; workers "
       "name them all, trust ca.crt, send worker.token; prometheus (%s, on "
       "127.0.0.1) scrapes %s and loads alerts.yml" %
       (os.path.basename(path), count, os.path.basename(host_config),
        " ".join(sorted(targets))))

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
if not build_targets <= set(stages):
    fail("the Compose files build targets %s the Dockerfile lacks" %
         sorted(build_targets - set(stages)))
prom_stage = dockerfile.split("AS prometheus", 1)[-1].split("FROM", 1)[0]
if not re.search(r"install [^\n]*\\\n\s*prometheus[ \t]*\\?$", prom_stage, re.M) or \
        "USER prometheus" not in prom_stage:
    fail("the Dockerfile's prometheus stage does not install Debian's "
         "prometheus and run as its user")
# The build stage. CI's container test does not run it (it replaces the
# stage by build/release's binaries with podman's --build-context), so it
# is checked here, without a build: each file it COPYs is in the context,
# each install_deps.sh group it names exists, its RUN lines parse as shell,
# each -DWEIGHTD_ option it passes is one CMakeLists.txt declares, and each
# binary it copies to /out/bin/ (what the runtime stages COPY --from=build)
# is at that path in BUILD_DIR, a tree of the same CMake project.
stage = dockerfile.split(" AS build\n", 1)[1].split("\nFROM ", 1)[0]
instructions = re.sub(r"\\\n", " ", stage).splitlines()
with open(os.path.join(repo, "scripts", "install_deps.sh")) as f:
    groups = set(re.findall(r"^\s*\[(\w+)\]=", f.read(), re.M))
with open(os.path.join(repo, "CMakeLists.txt")) as f:
    options = set(re.findall(r"^option\((\w+)", f.read(), re.M))
copied = []
for line in instructions:
    if line.startswith("COPY ") and "--from" not in line and line.split()[1] != ".":
        if not os.path.exists(os.path.join(repo, line.split()[1])):
            fail("the build stage copies %s, which the repository lacks" % line.split()[1])
    if not line.startswith("RUN "):
        continue
    run = line[4:]
    parsed = subprocess.run(["bash", "-n", "-c", run], capture_output=True, text=True)
    if parsed.returncode != 0:
        fail("the build stage's RUN does not parse: %s" % parsed.stderr.strip())
    for named in re.findall(r"install_deps\.sh((?: [a-z]+)+)", run):
        if not set(named.split()) <= groups:
            fail("the build stage installs groups %s; install_deps.sh has %s"
                 % (named.split(), sorted(groups)))
    for option in re.findall(r"-D(WEIGHTD_\w+)=", run):
        if option not in options:
            fail("the build stage passes -D%s, which CMakeLists.txt does not declare" % option)
    copied += re.findall(r"build/image/(\S+)", run)
if "/out/bin" not in stage or "COPY --from=build /out/bin/" not in dockerfile:
    fail("the runtime stages no longer take the build stage's /out/bin/")
for binary in copied:
    if not os.access(os.path.join(build, binary), os.X_OK):
        fail("the build stage copies build/image/%s, which %s does not have"
             % (binary, build))
if not copied:
    fail("the build stage copies no build/image/... binary to /out/bin/")
ok("Dockerfile build stage (not built in CI): copies what exists, installs "
   "groups install_deps.sh has, its RUN lines parse, -D options declared, "
   "copies %s, which %s has" % (" ".join(copied), build))
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
# One dpkg -S for every library (one per library took 28 s of the test).
needs = {}  # real path -> the binaries that link it
for binary in copied:
    libs = subprocess.run(["ldd", os.path.join(build, binary)],
                          capture_output=True, text=True, check=True).stdout
    for m in re.finditer(r"=> (/\S+)", libs):
        needs.setdefault(os.path.realpath(m.group(1)), []).append(binary)


def owners(paths):
    """{path: its (first) package} for each of paths that dpkg knows."""
    out = subprocess.run(["dpkg", "-S"] + sorted(paths), capture_output=True,
                         text=True).stdout  # Exit 1 if some are unknown.
    found = {}
    for line in out.splitlines():
        pkgs, _, path = line.partition(": ")
        if path in paths and not line.startswith("diversion by "):
            found.setdefault(path, pkgs.split(",")[0].split(":")[0])
    return found


owner = owners(needs)
# /usr/lib vs /lib (merged /usr): dpkg may know the library under /lib.
merged = {p.replace("/usr/lib/", "/lib/", 1): p for p in needs if p not in owner}
owner.update((merged[p], pkg) for p, pkg in owners(merged).items())
for real, binaries in sorted(needs.items()):
    pkg = owner.get(real)
    if pkg not in closure:
        fail("%s needs %s (%s), which the runtime image does not install"
             % (", ".join(binaries), real, pkg or "no package"))
ok("Dockerfile: build stage runs install_deps.sh and build.sh; runtime "
   "installs %s, which provide every library of %s"
   % (" ".join(listed), ", ".join(os.path.basename(b) for b in copied)))
