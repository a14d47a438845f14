#!/usr/bin/env python3
"""Checks docker-compose.yml and the deployment files without Docker, Kubernetes or a network.

There is no Docker engine on the build machines, so this script does the checks `docker
compose config` would, plus the ones that keep the project's files consistent:

- docker-compose.yml parses; only Compose-spec keys (top level, services, healthchecks,
  builds, depends_on); every service has an image or a build (whose Dockerfile exists) and a
  health check; durations, ports and volumes are well formed; bind-mounted files exist;
  named volumes are declared; no host port is published twice; depends_on names services
  and waits for health only on services that have a health check.
- deploy/brokers.env is the one place for host ports and credentials: it sets exactly the
  POLYBRIDGE_<BROKER>_URL variables testkit reads, and every URL's port is published by
  the right service onto the right container port, with the credentials that service is
  given (and, for Kafka, the listener it advertises to the host).
- testkit/README.md's example URLs are the ones in deploy/brokers.env.
- README.md's compose section names only ports docker-compose.yml publishes, and its
  broker table (between the `brokers:begin`/`brokers:end` markers) is the one
  this script generates from those two files; `--write` regenerates it.
- deploy/kubernetes/polybridge.yaml parses: a ConfigMap with a rule file, a Deployment that
  mounts it with liveness on /health and readiness on /ready on port 9464, and a Service
  that selects the Deployment's pods.
- Dockerfile: multi-stage, `cargo build --release -p polybridge-bridge --locked --features
  jemalloc` with one jemalloc arena and packed relocations on a runtime image with glibc
  2.36 (bookworm or later), a non-root USER, EXPOSE 9464 and a HEALTHCHECK on /health.
- deploy/systemd/polybridge.service has the sections and hardening it promises.
- With `--validate-rules`: `polybridge validate` (through cargo) on examples/compose.yaml
  and on the rule file inside the Kubernetes ConfigMap.

Run: python3 scripts/check-compose.py [--write] [--validate-rules]
Needs PyYAML (Debian: python3-yaml, installed by scripts/install-brokers.sh).
"""
import os
import re
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit, unquote

try:
    import yaml
except ImportError:
    # Debian's python3 has python3-yaml; another python3 first on PATH may not.
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        probe = subprocess.run(["/usr/bin/python3", "-c", "import yaml"], capture_output=True)
        if probe.returncode == 0:
            os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
    sys.exit("check-compose: PyYAML is missing: apt-get install python3-yaml "
             "(scripts/install-brokers.sh installs it) or pip install pyyaml")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE = "docker-compose.yml"
BROKERS_ENV = "deploy/brokers.env"
README = "README.md"
TESTKIT = "testkit/src/lib.rs"
TESTKIT_README = "testkit/README.md"
K8S = "deploy/kubernetes/polybridge.yaml"
SYSTEMD = "deploy/systemd/polybridge.service"
DOCKERFILE = "Dockerfile"
ADMIN_PORT = 9464

# The Compose specification's keys (https://github.com/compose-spec/compose-spec), vendored:
# the subset of the JSON schema this script enforces. `x-*` extensions are allowed anywhere.
TOP_KEYS = {"version", "name", "include", "services", "networks", "volumes", "secrets",
            "configs", "models"}
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent",
    "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus",
    "cpuset", "credential_spec", "depends_on", "deploy", "develop", "device_cgroup_rules",
    "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file",
    "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add",
    "healthcheck", "hostname", "image", "init", "ipc", "isolation", "label_file", "labels",
    "links", "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness",
    "memswap_limit", "models", "network_mode", "networks", "oom_kill_disable",
    "oom_score_adj", "pid", "pids_limit", "platform", "ports", "post_start", "pre_stop",
    "privileged", "profiles", "provider", "pull_policy", "read_only", "restart", "runtime",
    "scale", "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period",
    "stop_signal", "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "use_api_socket",
    "user", "userns_mode", "uts", "volumes", "volumes_from", "working_dir",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval",
                    "disable"}
BUILD_KEYS = {"context", "dockerfile", "dockerfile_inline", "args", "ssh", "cache_from",
              "cache_to", "additional_contexts", "entitlements", "extra_hosts", "isolation",
              "labels", "network", "no_cache", "platforms", "privileged", "provenance", "pull",
              "sbom", "secrets", "shm_size", "tags", "target", "ulimits"}
DEPENDS_KEYS = {"condition", "restart", "required"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART = {"no", "always", "on-failure", "unless-stopped"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")

# Which service and container port serves each testkit variable, and how its credentials are
# configured in docker-compose.yml: the environment names of user and password; "any" for a
# broker without authentication that accepts any login (ActiveMQ's stock configuration: the
# URL keeps testkit's guest:guest); None for one where the URL must carry no credentials.
ENDPOINTS = {
    "POLYBRIDGE_AMQP_URL": ("rabbitmq", 5672, "amqp", ("RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS")),
    "POLYBRIDGE_RABBITMQ_STOMP_URL": ("rabbitmq", 61613, "stomp", ("RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS")),
    "POLYBRIDGE_RABBITMQ_MQTT_URL": ("rabbitmq", 1883, "mqtt", None),
    "POLYBRIDGE_KAFKA_URL": ("kafka", 9092, "kafka", None),
    "POLYBRIDGE_NATS_URL": ("nats", 4222, "nats", None),
    "POLYBRIDGE_REDIS_URL": ("redis", 6379, "redis", None),
    "POLYBRIDGE_MQTT_URL": ("mosquitto", 1883, "mqtt", None),
    "POLYBRIDGE_STOMP_URL": ("activemq", 61613, "stomp", "any"),
}
DESCRIPTIONS = {
    "POLYBRIDGE_AMQP_URL": "RabbitMQ, AMQP 0-9-1",
    "POLYBRIDGE_RABBITMQ_STOMP_URL": "RabbitMQ, STOMP plugin",
    "POLYBRIDGE_RABBITMQ_MQTT_URL": "RabbitMQ, MQTT plugin",
    "POLYBRIDGE_KAFKA_URL": "Apache Kafka (KRaft)",
    "POLYBRIDGE_NATS_URL": "NATS with JetStream",
    "POLYBRIDGE_REDIS_URL": "Redis",
    "POLYBRIDGE_MQTT_URL": "Mosquitto",
    "POLYBRIDGE_STOMP_URL": "ActiveMQ Classic, STOMP",
}
TABLE_BEGIN = "<!-- brokers:begin (generated by scripts/check-compose.py --write from deploy/brokers.env and docker-compose.yml) -->"
TABLE_END = "<!-- brokers:end -->"

errors = []


def error(where, msg):
    errors.append(f"{where}: {msg}")


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def load_yaml(path, many=False):
    try:
        text = read(path)
    except OSError as e:
        error(path, f"cannot read: {e}")
        return None
    try:
        return list(yaml.safe_load_all(text)) if many else yaml.safe_load(text)
    except yaml.YAMLError as e:
        error(path, f"not valid YAML: {e}")
        return None


def unknown_keys(where, mapping, allowed):
    for k in mapping:
        if not (isinstance(k, str) and (k in allowed or k.startswith("x-"))):
            error(where, f"unknown key {k!r} (not in the Compose specification)")


def check_duration(where, value):
    if not isinstance(value, str) or not DURATION.match(value):
        error(where, f"{value!r} is not a Compose duration (e.g. 10s, 1m30s)")


def parse_port(where, entry):
    """A published port as (host_ip, host_port, container_port, protocol); None if unpublished."""
    if isinstance(entry, dict):
        unknown_keys(where, entry, {"name", "target", "published", "host_ip", "protocol",
                                    "app_protocol", "mode"})
        if "target" not in entry:
            error(where, "a long-syntax port needs `target`")
            return None
        if "published" not in entry:
            return None
        return (entry.get("host_ip", ""), int(str(entry["published"])), int(entry["target"]),
                entry.get("protocol", "tcp"))
    if not isinstance(entry, str):
        error(where, f"write ports as quoted strings (\"HOST:CONTAINER\"), not {entry!r}: "
                     "YAML reads some unquoted values as base-60 numbers")
        return None
    m = re.match(r"^(?:(\[[0-9a-fA-F:]+\]|\d+\.\d+\.\d+\.\d+):)?(?:(\d+):)?(\d+)(?:/(tcp|udp|sctp))?$", entry)
    if not m:
        error(where, f"{entry!r} is not [IP:][HOST:]CONTAINER[/PROTOCOL]")
        return None
    host_ip, host, container, proto = m.groups()
    if host is None:
        return None
    return (host_ip or "", int(host), int(container), proto or "tcp")


def check_compose():
    doc = load_yaml(COMPOSE)
    if doc is None:
        return None
    if not isinstance(doc, dict):
        error(COMPOSE, "the top level must be a mapping")
        return None
    unknown_keys(COMPOSE, doc, TOP_KEYS)
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        error(COMPOSE, "`services` must map service names to services")
        return None
    volumes = doc.get("volumes") or {}
    if not isinstance(volumes, dict):
        error(COMPOSE, "top-level `volumes` must be a mapping")
        volumes = {}
    published = {}
    for name, svc in services.items():
        where = f"{COMPOSE}: service {name}"
        if not re.match(r"^[a-zA-Z0-9._-]+$", str(name)):
            error(where, "invalid service name")
        if not isinstance(svc, dict):
            error(where, "must be a mapping")
            continue
        unknown_keys(where, svc, SERVICE_KEYS)
        if "image" not in svc and "build" not in svc:
            error(where, "needs `image` or `build`")
        build = svc.get("build")
        if build is not None:
            if isinstance(build, str):
                build = {"context": build}
            if not isinstance(build, dict):
                error(where, "`build` must be a path or a mapping")
            else:
                unknown_keys(f"{where} build", build, BUILD_KEYS)
                context = os.path.join(ROOT, build.get("context", "."))
                dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
                if "dockerfile_inline" not in build and not os.path.isfile(dockerfile):
                    error(where, f"build: no Dockerfile at {os.path.relpath(dockerfile, ROOT)}")
        if "restart" in svc and str(svc["restart"]).split(":")[0] not in RESTART:
            error(where, f"restart: {svc['restart']!r} is not one of {sorted(RESTART)}")
        if "stop_grace_period" in svc:
            check_duration(f"{where} stop_grace_period", svc["stop_grace_period"])
        env = svc.get("environment", {})
        if not isinstance(env, (dict, list)):
            error(where, "`environment` must be a mapping or a list")
        hc = svc.get("healthcheck")
        if not isinstance(hc, dict):
            error(where, "needs a `healthcheck` (its dependants and `docker compose up --wait` rely on it)")
        else:
            unknown_keys(f"{where} healthcheck", hc, HEALTHCHECK_KEYS)
            if hc.get("disable"):
                error(where, "the health check is disabled")
            test = hc.get("test")
            if isinstance(test, list):
                if not test or test[0] not in ("CMD", "CMD-SHELL"):
                    error(where, "healthcheck test: a list must start with CMD or CMD-SHELL")
                elif len(test) < 2:
                    error(where, "healthcheck test: no command")
            elif not isinstance(test, str) or not test.strip():
                error(where, "healthcheck needs a `test`")
            for key in ("interval", "timeout", "start_period", "start_interval"):
                if key in hc:
                    check_duration(f"{where} healthcheck {key}", hc[key])
            if "retries" in hc and not (isinstance(hc["retries"], int) and hc["retries"] > 0):
                error(where, "healthcheck retries must be a positive integer")
        for entry in svc.get("ports", []) or []:
            p = parse_port(f"{where} ports", entry)
            if p is None:
                continue
            host_ip, host, container, proto = p
            key = (host, proto)
            if key in published:
                error(where, f"host port {host}/{proto} is also published by service {published[key][0]}")
            published[key] = (name, container)
        for entry in svc.get("volumes", []) or []:
            if isinstance(entry, dict):
                unknown_keys(f"{where} volumes", entry, {"type", "source", "target", "read_only",
                                                         "bind", "volume", "tmpfs", "image",
                                                         "consistency"})
                source, kind = entry.get("source"), entry.get("type")
            elif isinstance(entry, str):
                parts = entry.split(":")
                if len(parts) < 2 or len(parts) > 3:
                    error(where, f"volume {entry!r} is not SOURCE:TARGET[:MODE]")
                    continue
                source = parts[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
                if len(parts) == 3 and not set(parts[2].split(",")) <= {"ro", "rw", "z", "Z",
                                                                        "cached", "delegated",
                                                                        "consistent", "nocopy"}:
                    error(where, f"volume {entry!r}: unknown mode {parts[2]!r}")
            else:
                error(where, f"volume {entry!r} must be a string or a mapping")
                continue
            if kind == "bind":
                if not os.path.exists(os.path.join(ROOT, source)):
                    error(where, f"bind-mounted {source!r} does not exist")
            elif kind == "volume" and source and source not in volumes:
                error(where, f"named volume {source!r} is not declared under top-level `volumes`")
        deps = svc.get("depends_on", {}) or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                error(where, f"depends_on names {dep!r}, which is not a service")
                continue
            if not isinstance(spec, dict):
                error(where, f"depends_on {dep}: must be a mapping")
                continue
            unknown_keys(f"{where} depends_on {dep}", spec, DEPENDS_KEYS)
            cond = spec.get("condition", "service_started")
            if cond not in CONDITIONS:
                error(where, f"depends_on {dep}: condition {cond!r} is not one of {sorted(CONDITIONS)}")
            if cond == "service_healthy" and not isinstance(services[dep].get("healthcheck"), dict):
                error(where, f"depends_on {dep}: service_healthy, but {dep} has no health check")
    return {"services": services, "published": published}


def env_of(svc):
    env = svc.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def read_brokers_env():
    out = {}
    try:
        text = read(BROKERS_ENV)
    except OSError as e:
        error(BROKERS_ENV, f"cannot read: {e}")
        return out
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Z_][A-Z0-9_]*)=(\S+)$", line)
        if not m:
            error(f"{BROKERS_ENV}:{n}", "expected NAME=VALUE (no spaces, no quotes)")
            continue
        if m.group(1) in out:
            error(f"{BROKERS_ENV}:{n}", f"{m.group(1)} is set twice")
        out[m.group(1)] = m.group(2)
    return out


def check_brokers_env(compose, env):
    try:
        testkit_vars = set(re.findall(r'"(POLYBRIDGE_[A-Z_]+_URL)"', read(TESTKIT)))
    except OSError as e:
        error(TESTKIT, f"cannot read: {e}")
        testkit_vars = set()
    for var in sorted(testkit_vars - set(env)):
        error(BROKERS_ENV, f"{var} (read by testkit) is not set")
    for var in sorted(set(env) - testkit_vars):
        error(BROKERS_ENV, f"{var} is not a variable testkit reads")
    try:
        examples = dict(re.findall(r"^\| `(POLYBRIDGE_[A-Z_]+_URL)` \|[^|]*e\.g\. `([^`]+)`", read(TESTKIT_README), re.M))
    except OSError as e:
        error(TESTKIT_README, f"cannot read: {e}")
        examples = {}
    for var, url in sorted(examples.items()):
        if var in env and env[var] != url:
            error(TESTKIT_README, f"{var}: the example {url!r} differs from {BROKERS_ENV} ({env[var]!r})")
    for var in sorted(testkit_vars - set(examples)):
        error(TESTKIT_README, f"{var}: no row with an example URL")
    for var in sorted(testkit_vars - set(ENDPOINTS)):
        error("scripts/check-compose.py", f"ENDPOINTS does not say which service serves {var}")
    if compose is None:
        return
    services, published = compose["services"], compose["published"]
    for var, url in env.items():
        if var not in ENDPOINTS:
            continue
        service, container_port, scheme, creds = ENDPOINTS[var]
        where = f"{BROKERS_ENV}: {var}"
        u = urlsplit(url)
        if u.scheme != scheme:
            error(where, f"scheme {u.scheme!r}, expected {scheme!r}")
        if u.hostname not in ("127.0.0.1", "localhost"):
            error(where, f"host {u.hostname!r}: compose publishes on the loopback of the Docker host")
        try:
            port = u.port
        except ValueError:
            port = None
        if port is None:
            error(where, "the URL must name its port")
            continue
        if service not in services:
            error(where, f"docker-compose.yml has no service {service!r}")
            continue
        target = published.get((port, "tcp"))
        if target is None:
            error(where, f"docker-compose.yml publishes nothing on host port {port}")
        elif target != (service, container_port):
            error(where, f"host port {port} goes to {target[0]}:{target[1]} in docker-compose.yml, "
                         f"expected {service}:{container_port}")
        svc_env = env_of(services[service])
        if isinstance(creds, tuple):
            user_var, pass_var = creds
            want = (svc_env.get(user_var), svc_env.get(pass_var))
            got = (unquote(u.username or ""), unquote(u.password or ""))
            if want != got:
                error(where, f"credentials {got[0]!r}/*** differ from {service}'s {user_var}/{pass_var} in docker-compose.yml")
        elif creds is None and u.password:
            error(where, f"{service} is configured without authentication: drop the credentials or configure them")
        if var == "POLYBRIDGE_KAFKA_URL":
            advertised = svc_env.get("KAFKA_ADVERTISED_LISTENERS", "")
            hosts = [l.split("://", 1)[1] for l in advertised.split(",") if "://" in l]
            if f"{u.hostname}:{port}" not in hosts:
                error(where, f"Kafka advertises {advertised!r}: clients on the host need {u.hostname}:{port} in it")


def broker_table(compose, env):
    rows = ["| variable (deploy/brokers.env) | broker | service, image | URL |", "|---|---|---|---|"]
    services = compose["services"] if compose else {}
    for var, url in env.items():
        service = ENDPOINTS.get(var, ("?",))[0]
        image = services.get(service, {}).get("image", "?")
        rows.append(f"| `{var}` | {DESCRIPTIONS.get(var, '?')} | `{service}`, `{image}` | `{url}` |")
    return "\n".join(rows)


def check_readme(compose, env, write):
    try:
        text = read(README)
    except OSError as e:
        error(README, f"cannot read: {e}")
        return
    # Every loopback port the README's compose section mentions is one compose publishes.
    section = re.search(r"^## Run the tests against docker compose\n(.*?)(?=^## )", text, re.S | re.M)
    if section is None:
        error(README, "no section \"## Run the tests against docker compose\"")
    elif compose is not None:
        ports = {host for host, _ in compose["published"]}
        for port in sorted({int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", section.group(1))}):
            if port not in ports:
                error(README, f"the compose section mentions 127.0.0.1:{port}, which docker-compose.yml does not publish")
    begin, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if begin < 0 or end < begin:
        error(README, f"no broker table between {TABLE_BEGIN!r} and {TABLE_END!r}")
        return
    want = text[:begin] + TABLE_BEGIN + "\n" + broker_table(compose, env) + "\n" + text[end:]
    if want != text:
        if write:
            with open(os.path.join(ROOT, README), "w", encoding="utf-8") as f:
                f.write(want)
            print(f"check-compose: rewrote the broker table in {README}")
        else:
            error(README, "the broker table differs from deploy/brokers.env and docker-compose.yml: "
                          "run python3 scripts/check-compose.py --write")


def check_kubernetes():
    docs = load_yaml(K8S, many=True)
    if docs is None:
        return None
    by_kind = {}
    for i, d in enumerate(docs):
        if d is None:
            continue
        where = f"{K8S}: document {i + 1}"
        if not isinstance(d, dict):
            error(where, "must be a mapping")
            continue
        for key in ("apiVersion", "kind", "metadata"):
            if key not in d:
                error(where, f"missing `{key}`")
        if not (d.get("metadata") or {}).get("name"):
            error(where, "missing metadata.name")
        by_kind.setdefault(d.get("kind"), []).append(d)
    for kind in ("ConfigMap", "Deployment", "Service"):
        if len(by_kind.get(kind, [])) != 1:
            error(K8S, f"expected one {kind}, found {len(by_kind.get(kind, []))}")
    if any(len(by_kind.get(k, [])) != 1 for k in ("ConfigMap", "Deployment", "Service")):
        return None
    cm, dep, svc = by_kind["ConfigMap"][0], by_kind["Deployment"][0], by_kind["Service"][0]
    rules_text = (cm.get("data") or {}).get("rules.yaml")
    if not isinstance(rules_text, str):
        error(K8S, "the ConfigMap needs a `rules.yaml` key with the rule file")
    else:
        try:
            rules = yaml.safe_load(rules_text)
            listen = ((rules or {}).get("admin") or {}).get("listen", "")
            if not str(listen).endswith(f":{ADMIN_PORT}") or str(listen).startswith("127."):
                error(K8S, f"the rule file's admin.listen must be 0.0.0.0:{ADMIN_PORT} for the probes, got {listen!r}")
        except yaml.YAMLError as e:
            error(K8S, f"the ConfigMap's rules.yaml is not valid YAML: {e}")
    if dep.get("apiVersion") != "apps/v1":
        error(K8S, "Deployment: apiVersion must be apps/v1")
    spec = dep.get("spec") or {}
    selector = ((spec.get("selector") or {}).get("matchLabels")) or {}
    template = spec.get("template") or {}
    labels = ((template.get("metadata") or {}).get("labels")) or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        error(K8S, "Deployment: spec.selector.matchLabels must match the pod template's labels")
    pod = template.get("spec") or {}
    containers = pod.get("containers") or []
    if len(containers) != 1:
        error(K8S, "Deployment: expected one container")
        return None
    c = containers[0]
    env = {e.get("name"): str(e.get("value", "")) for e in c.get("env") or [] if "value" in e}
    ports = {p.get("containerPort"): p.get("name") for p in c.get("ports") or []}
    if ADMIN_PORT not in ports:
        error(K8S, f"Deployment: the container must declare containerPort {ADMIN_PORT}")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = ((c.get(probe) or {}).get("httpGet")) or {}
        if get.get("path") != path or get.get("port") not in (ADMIN_PORT, ports.get(ADMIN_PORT)):
            error(K8S, f"Deployment: {probe} must be httpGet {path} on port {ADMIN_PORT}")
    cm_name = cm["metadata"]["name"]
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    mounted = [v for v in volumes.values() if (v.get("configMap") or {}).get("name") == cm_name]
    if not mounted:
        error(K8S, f"Deployment: no volume from ConfigMap {cm_name!r}")
    elif not any(m.get("name") == mounted[0].get("name") for m in c.get("volumeMounts") or []):
        error(K8S, "Deployment: the container does not mount the ConfigMap volume")
    sspec = svc.get("spec") or {}
    if any(labels.get(k) != v for k, v in (sspec.get("selector") or {}).items()) or not sspec.get("selector"):
        error(K8S, "Service: spec.selector must select the Deployment's pods")
    if not any(p.get("targetPort") in (ADMIN_PORT, ports.get(ADMIN_PORT)) for p in sspec.get("ports") or []):
        error(K8S, f"Service: no port targets {ADMIN_PORT}")
    return (rules_text, env) if isinstance(rules_text, str) else None


def check_systemd():
    try:
        text = read(SYSTEMD)
    except OSError as e:
        error(SYSTEMD, f"cannot read: {e}")
        return
    sections, current = {}, None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = re.match(r"^\[([A-Za-z]+)\]$", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        if current is None or "=" not in line:
            error(f"{SYSTEMD}:{n}", "expected [Section] or Key=Value")
            continue
        k, v = line.split("=", 1)
        current.setdefault(k.strip(), []).append(v.strip())
    for s in ("Unit", "Service", "Install"):
        if s not in sections:
            error(SYSTEMD, f"no [{s}] section")
    service = sections.get("Service", {})
    want = {"DynamicUser": "yes", "ProtectSystem": "strict", "Restart": "on-failure",
            "NoNewPrivileges": "yes"}
    for k, v in want.items():
        if service.get(k, [None])[-1] != v:
            error(SYSTEMD, f"[Service] needs {k}={v}")
    if not any("polybridge" in e and " run " in f" {e} " for e in service.get("ExecStart", [])):
        error(SYSTEMD, "[Service] ExecStart must run `polybridge run`")


def polybridge_validate(path, env, label=None):
    """`polybridge validate PATH` through cargo, with exactly `env` as the rule file's variables;
    `label` names the file in the output instead of `path`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POLYBRIDGE_")}
    cmd = ["cargo", "run", "--quiet", "--locked", "-p", "polybridge-bridge", "--", "validate", path]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**clean, **env})
    out, err = r.stdout, r.stderr.strip()
    if label:
        out, err = out.replace(path, label), err.replace(path, label)
    sys.stdout.write(out)
    if r.returncode != 0:
        error("polybridge validate", err or f"exit code {r.returncode}")


def check_dockerfile():
    try:
        text = read(DOCKERFILE)
    except OSError as e:
        error(DOCKERFILE, f"cannot read: {e}")
        return
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if len(stages) < 2:
        error(DOCKERFILE, "expected a multi-stage build (a build stage and a runtime stage)")
    if "cargo build --release -p polybridge-bridge --locked --features jemalloc" not in text:
        error(DOCKERFILE, "the build stage must run cargo build --release -p polybridge-bridge --locked --features jemalloc")
    # The image's memory settings (docs/benchmarks/README.md, "The container image: jemalloc
    # in the same memory"); packed relocations need glibc 2.36 in the runtime image.
    for setting in ("-z,pack-relative-relocs", 'JEMALLOC_SYS_WITH_MALLOC_CONF="narenas:1"'):
        if setting not in text:
            error(DOCKERFILE, f"the build stage must set {setting}")
    if stages and not re.search(r"bookworm|trixie", stages[-1]):
        error(DOCKERFILE, f"the runtime stage {stages[-1]} may predate glibc 2.36, which packed relocations need")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        error(DOCKERFILE, "the runtime stage must run as a non-root USER")
    if not re.search(rf"^EXPOSE\s+{ADMIN_PORT}\b", text, re.M):
        error(DOCKERFILE, f"EXPOSE {ADMIN_PORT} (the admin server) is missing")
    if not re.search(r"^HEALTHCHECK\b[^\n]*(\\\n[^\n]*)*/health", text, re.M):
        error(DOCKERFILE, "a HEALTHCHECK on /health is missing")


def validate_rules(k8s):
    # examples/compose.yaml as the polybridge service runs it (compose host names), and as a
    # user runs it on the host with deploy/brokers.env.
    polybridge_validate("examples/compose.yaml", {})
    polybridge_validate("examples/compose.yaml", read_brokers_env(),
                        "examples/compose.yaml with deploy/brokers.env")
    if k8s:
        rules_text, env = k8s
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kubernetes-configmap-rules.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(rules_text)
            polybridge_validate(path, env, f"{K8S} (ConfigMap rules.yaml)")


def main():
    args = set(sys.argv[1:])
    unknown = args - {"--write", "--validate-rules"}
    if unknown:
        sys.exit(f"usage: {sys.argv[0]} [--write] [--validate-rules] (unknown: {' '.join(sorted(unknown))})")
    compose = check_compose()
    env = read_brokers_env()
    check_brokers_env(compose, env)
    check_readme(compose, env, "--write" in args)
    check_dockerfile()
    k8s = check_kubernetes()
    check_systemd()
    if "--validate-rules" in args:
        validate_rules(k8s)
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        sys.exit(f"check-compose: {len(errors)} problem(s)")
    services = len(compose["services"]) if compose else 0
    print(f"check-compose: ok ({COMPOSE}: {services} services; {BROKERS_ENV}: {len(env)} URLs; {K8S}; {SYSTEMD})")


if __name__ == "__main__":
    main()
