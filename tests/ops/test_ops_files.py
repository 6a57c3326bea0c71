"""The files under ops/: the IoT Edge deployment manifest, the layered ring deployments,
the Prometheus configuration and rules (checked and unit-tested by the real promtool),
and the Grafana dashboard. They are checked against the code they describe: the
desired-properties parser, the settings the code reads, the metrics it declares."""
from __future__ import annotations

import ast
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.settings import ServiceSettings
from service.update.desired import MAX_DOCUMENT_BYTES, merge_patch, parse_desired
from tests.support.paths import DEFAULT_MODEL, PACKAGES, PROJECT_ROOT
from tests.support.service_process import ServiceProcess
from twinfer.settings_table import BY_NAME
from workers.settings import WorkerSettings, check_server_protection

OPS = PROJECT_ROOT / "ops"
TEMPLATE = OPS / "deployment.template.json"
DEPLOYMENTS = OPS / "deployments"
DEPLOYMENTS_README = DEPLOYMENTS / "README.md"
RINGS = ("ring0-canary", "ring1-ten-percent", "ring2-all")
PROMETHEUS = OPS / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "twinfer.rules.yml"
RULES_TEST = PROMETHEUS / "twinfer.rules.test.yml"
DASHBOARD = OPS / "grafana" / "twinfer-dashboard.json"
METRIC_MODULES = (PROJECT_ROOT / "workers" / "metrics.py", PROJECT_ROOT / "service" / "metrics.py")
CREATE_OPTIONS_MAX_BYTES = 4 * 1024  # a twin string value; longer options need createOptions01.. chunks
TOKEN_PLACEHOLDER = re.compile(r"\$\{?TWINFER_API_TOKENS\}?")
SAMPLE_TOKEN = "sample-token-0123456789abcdef"  # what an operator puts in place of the placeholder
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_json(TEMPLATE)["modulesContent"]


@pytest.fixture(scope="module")
def agent(manifest) -> dict:
    return manifest["$edgeAgent"]["properties.desired"]


@pytest.fixture(scope="module")
def twinfer_module(agent) -> dict:
    return agent["modules"]["twinfer"]


@pytest.fixture(scope="module")
def twinfer_env(twinfer_module) -> dict[str, str]:
    return {name: entry["value"] for name, entry in twinfer_module["env"].items()}


def create_options(settings: dict) -> dict:
    """``createOptions`` as IoT Edge reads it: an object (deployment templates), or a JSON
    string, possibly continued in ``createOptions01``..``createOptions07``."""
    raw = settings.get("createOptions", {})
    if isinstance(raw, str):
        raw = raw + "".join(settings.get(f"createOptions{i:02d}", "") for i in range(1, 8))
        return json.loads(raw)
    assert isinstance(raw, dict), "createOptions must be a JSON object or a JSON string"
    return raw


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- every JSON file ---------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(OPS.rglob("*.json")), ids=lambda p: str(p.relative_to(OPS)))
def test_every_json_file_under_ops_parses(path):
    assert isinstance(load_json(path), dict)


# --- the deployment manifest ---------------------------------------------------------


def test_edge_agent_runtime_and_system_modules(agent):
    assert agent["schemaVersion"] == "1.1"
    runtime = agent["runtime"]
    assert runtime["type"] == "docker"
    assert runtime["settings"]["minDockerVersion"]
    for name, credentials in runtime["settings"]["registryCredentials"].items():
        assert set(credentials) == {"address", "username", "password"}, name
        for key, value in credentials.items():
            placeholder = re.fullmatch(r"\$\{?CONTAINER_REGISTRY_[A-Z_]+\}?", value)
            assert placeholder, f"{name}.{key} must be a placeholder, not a secret"

    system = agent["systemModules"]
    assert system["edgeAgent"]["type"] == "docker"
    assert system["edgeAgent"]["settings"]["image"] == "mcr.microsoft.com/azureiotedge-agent:1.5"
    hub = system["edgeHub"]
    assert (hub["type"], hub["status"], hub["restartPolicy"]) == ("docker", "running", "always")
    assert hub["settings"]["image"] == "mcr.microsoft.com/azureiotedge-hub:1.5"
    bindings = create_options(hub["settings"])["HostConfig"]["PortBindings"]
    assert {"8883/tcp", "443/tcp", "5671/tcp"} <= set(bindings)


def test_twinfer_module_settings(twinfer_module, twinfer_env):
    module = twinfer_module
    assert (module["type"], module["status"], module["restartPolicy"]) == ("docker", "running", "always")
    assert isinstance(module["startupOrder"], int) and module["startupOrder"] > 0  # after edgeHub (0)
    assert module["settings"]["image"] == "${MODULE_IMAGE}"

    options = create_options(module["settings"])
    host = options["HostConfig"]
    store = twinfer_env["TWINFER_STORE"]
    assert store == "/iotedge/storage"  # where the Dockerfile's VOLUME and the non-root user's directory are
    mounts = {bind.split(":")[1]: bind.split(":")[0] for bind in host["Binds"]}
    assert mounts.get(store) == "/srv/twinfer", "the model store must outlive the container"

    port = f"{twinfer_env['TWINFER_HTTP_PORT']}/tcp"
    assert port == "8080/tcp"
    assert host["PortBindings"][port][0]["HostPort"] == "8080"
    assert isinstance(host["Memory"], int) and host["Memory"] >= 512 * 1024**2

    gunicorn_conf = (PROJECT_ROOT / "workers" / "gunicorn_config.py").read_text()
    graceful = int(re.search(r"^graceful_timeout\s*=\s*(\d+)", gunicorn_conf, re.M).group(1))
    assert options["StopTimeout"] > graceful, "docker must wait longer than gunicorn's graceful shutdown"


def test_store_ownership_note_matches_the_dockerfile_user():
    uid = re.search(r"useradd [^\n]*--uid (\d+)", (PROJECT_ROOT / "Dockerfile").read_text()).group(1)
    assert f"sudo chown {uid} /srv/twinfer" in DEPLOYMENTS_README.read_text()


def test_every_create_options_fits_a_twin_string(agent):
    modules = {**agent["systemModules"], **agent["modules"]}
    for name, module in modules.items():
        serialised = compact(create_options(module["settings"]))
        assert len(serialised.encode()) <= CREATE_OPTIONS_MAX_BYTES, f"{name}: createOptions over 4 KB"


def test_edge_hub_routes_the_model_ready_output_upstream(manifest, twinfer_env):
    hub = manifest["$edgeHub"]["properties.desired"]
    assert hub["schemaVersion"] == "1.1"
    routes = [route["route"] if isinstance(route, dict) else route for route in hub["routes"].values()]
    output = twinfer_env.get("TWINFER_MODEL_OUTPUT", "DLModelOutput")
    assert output == "DLModelOutput"
    wanted = re.compile(rf"^FROM /messages/modules/twinfer/outputs/{output} INTO \$upstream$")
    assert any(wanted.match(route.strip()) for route in routes), routes
    assert hub["storeAndForwardConfiguration"]["timeToLiveSecs"] > 0


def test_base_desired_properties_parse_and_fit(manifest, monkeypatch):
    desired = manifest["twinfer"]["properties.desired"]
    state = parse_desired(desired)
    assert state.model is not None and state.model.sha256 and state.model.size
    assert state.score_threshold is not None and state.max_bytes_per_second is not None
    assert len(compact(desired).encode()) < MAX_DOCUMENT_BYTES
    # The placeholder URL is never fetched: it names the bundled model, which the module
    # stages on an empty store, and a version already in the store activates without a download.
    for name in ("TWINFER_DEFAULT_MODEL_NAME", "TWINFER_DEFAULT_MODEL_VERSION"):
        monkeypatch.delenv(name, raising=False)
    defaults = ServiceSettings.from_env()
    assert (state.model.name, state.model.version) == (defaults.default_model_name, defaults.default_model_version)


def test_the_api_listens_on_loopback_or_a_named_address_only(twinfer_module, twinfer_env):
    """Docker publishes a port without HostIp on every host interface; the inference API
    is for the device's own clients (other modules reach it on the Edge network without
    any port binding)."""
    bindings = create_options(twinfer_module["settings"])["HostConfig"]["PortBindings"]
    assert bindings
    for port, entries in bindings.items():
        for entry in entries:
            assert entry.get("HostIp", "") not in WILDCARD_HOSTS, f"{port} is published on every host interface"
    assert twinfer_env.get("TWINFER_HTTP_HOST", "0.0.0.0") in WILDCARD_HOSTS, (
        "inside the container the API must listen on the container's interface, or the binding reaches nothing"
    )


def test_the_api_token_is_a_placeholder_the_operator_fills(twinfer_env):
    """A token in the repository would be a shared secret; no token would leave the API open."""
    assert TOKEN_PLACEHOLDER.fullmatch(twinfer_env["TWINFER_API_TOKENS"])
    check_server_protection({"TWINFER_API_TOKENS": SAMPLE_TOKEN})  # what the filled-in value must look like


@pytest.mark.processes
def test_the_template_env_as_is_stops_the_service_naming_the_token(twinfer_env, tmp_path):
    """Deployed with the placeholder left in, the module refuses to start (fails closed)
    instead of serving without a token."""
    env = {name: value for name, value in twinfer_env.items() if name not in ("TWINFER_STORE", "TWINFER_HTTP_PORT")}
    with ServiceProcess.start(tmp_path / "store", workers=1, extra_env=env, wait_ready=False) as service:
        code = service.proc.wait(timeout=60)
        log = service.log()
    assert code != 0, log
    assert "TWINFER_API_TOKENS" in log and "bearer token" in log, log


def test_the_root_filesystem_is_read_only_with_a_writable_place_for_each_write(twinfer_module, twinfer_env):
    """What the running service writes (traced with strace -f: the store, and gunicorn's
    worker heartbeat files in worker_tmp_dir) lands on a writable mount; /tmp is a tmpfs for
    tempfile users (the operator commands run with docker exec)."""
    host = create_options(twinfer_module["settings"])["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    tmpfs = host["Tmpfs"]
    assert "/tmp" in tmpfs and "noexec" in tmpfs["/tmp"].split(",")
    writable = {bind.split(":")[1] for bind in host["Binds"]} | set(tmpfs) | {"/dev/shm"}  # Docker's own tmpfs
    gunicorn_conf = (PROJECT_ROOT / "workers" / "gunicorn_config.py").read_text()
    worker_tmp_dir = re.search(r'^worker_tmp_dir\s*=\s*"([^"]+)"', gunicorn_conf, re.M).group(1)
    for path in (twinfer_env["TWINFER_STORE"], worker_tmp_dir):
        assert any(path == place or path.startswith(place.rstrip("/") + "/") for place in writable), path


@pytest.mark.processes
def test_the_sample_desired_model_is_the_bundled_model_as_a_bundle(manifest, tmp_path):
    """The base's ``model`` is the bundle ``python -m service bundle`` makes of models/default
    (fixed timestamps, the model stored: the same files give the same bytes), so an
    operator who uploads that bundle to the sample's URL gets a true entry."""
    model = manifest["twinfer"]["properties.desired"]["model"]
    out = tmp_path / "bundle.zip"
    command = [
        sys.executable, "-m", "service", "bundle", str(DEFAULT_MODEL / "model.onnx"),
        "--labels", str(DEFAULT_MODEL / "labels.txt"), "--metadata", str(DEFAULT_MODEL / "twinfer.json"),
        "--name", model["name"], "--version", model["version"], "-o", str(out), "--json",
    ]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    built = json.loads(result.stdout)
    assert (model["sha256"], model["size"]) == (built["sha256"], built["size"])
    assert model["url"].endswith(f"/{model['name']}-{model['version']}.zip")


# --- environment variables -------------------------------------------------------------


def test_every_env_var_is_a_setting_the_code_reads(twinfer_env):
    sources = "\n".join(p.read_text() for package in PACKAGES for p in (PROJECT_ROOT / package).rglob("*.py"))
    for name in twinfer_env:
        assert name in BY_NAME, f"{name} is not declared in twinfer/settings_table.py"
        assert re.search(rf"""\bread\(\s*["']{re.escape(name)}["']""", sources), f"{name} is declared but never read"


def test_the_settings_loaders_accept_the_env_values(twinfer_env, monkeypatch):
    for name in [n for n in os.environ if n.startswith("TWINFER_")]:
        monkeypatch.delenv(name)
    for name, value in twinfer_env.items():
        assert isinstance(value, str), f"{name}: IoT Edge env values are strings"
        monkeypatch.setenv(name, TOKEN_PLACEHOLDER.sub(SAMPLE_TOKEN, value))
    service = ServiceSettings.from_env()
    WorkerSettings.from_env()
    assert service.store == Path("/iotedge/storage") and service.http_port == 8080
    # TwinferWorkersMissing compares with the configured worker count.
    threshold = int(re.search(r"expr:\s*twinfer_workers\s*<\s*(\d+)", RULES.read_text()).group(1))
    assert threshold == service.workers


# --- layered ring deployments ------------------------------------------------------------


def _create_commands() -> list[str]:
    """The ``az iot edge deployment create`` commands of ops/deployments/README.md, one line each."""
    text = DEPLOYMENTS_README.read_text().replace("\\\n", " ")
    return [re.sub(r"\s+", " ", line) for line in text.splitlines() if "az iot edge deployment create" in line]


def _ring_values(condition: str) -> set[str]:
    return set(re.findall(r"tags\.twinfer\.ring='([a-z-]+)'", condition))


def _priority_table() -> dict[str, set[int]]:
    """content file stem -> its priorities, from the table of ops/deployments/README.md."""
    table = {}
    for row in re.findall(r"^\|.*\|$", DEPLOYMENTS_README.read_text(), re.M):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        files = re.findall(r"`(?:\.\./)?([a-z0-9.-]+)\.json`", cells[1]) if len(cells) == 5 else []
        if files:
            stem = files[0].replace("deployment.template", "deployment")
            table[stem] = {int(n) for n in re.findall(r"\d+", cells[4])}
    return table


@pytest.fixture(scope="module")
def plan() -> dict[str, dict]:
    """content file stem -> {priorities, layered, rings}: the README's table, checked
    against its ``az iot edge deployment create`` commands."""
    table = _priority_table()
    result = {}
    for command in _create_commands():
        stem = Path(re.search(r"--content (\S+)", command).group(1)).stem
        priority = int(re.search(r"--priority (\d+)", command).group(1))
        assert priority in table[stem], f"{stem}: priority {priority} is not in the README's table {table[stem]}"
        result[stem] = {
            "priorities": table[stem],
            "layered": " --layered" in command,
            "rings": _ring_values(re.search(r'--target-condition "([^"]+)"', command).group(1)),
        }
    return result


def test_readme_creates_the_base_and_each_ring_with_nested_targets_and_priorities(plan):
    assert set(plan) == {"deployment", *RINGS}
    base, ring0, ring1, ring2 = (plan[name] for name in ("deployment", *RINGS))
    assert not base["layered"] and all(plan[ring]["layered"] for ring in RINGS)
    # Nested targets; the narrowest ring (the newest model) wins where it applies, and
    # every layered deployment ranks above the base, as IoT Hub requires.
    assert ring0["rings"] < ring1["rings"] < ring2["rings"] == base["rings"]
    assert base["priorities"] == {1}
    for narrower, wider in ((ring0, ring1), (ring1, ring2), (ring2, base)):
        assert min(narrower["priorities"]) > max(wider["priorities"])
    # Two priorities per ring: a new version's deployment outranks the ring's current one
    # from the moment it is created, without relying on IoT Hub's tie-break.
    assert all(len(plan[ring]["priorities"]) == 2 for ring in RINGS)


def _ring_content(name: str) -> dict:
    document = load_json(DEPLOYMENTS / f"{name}.json")
    modules = document["content"]["modulesContent"]
    assert set(modules) == {"twinfer"}, "ring deployments set the module twin only (no system modules)"
    return modules["twinfer"]


@pytest.mark.parametrize("ring", RINGS)
def test_ring_deployments_set_desired_paths_not_the_whole_document(ring):
    content = _ring_content(ring)
    assert content
    for key in content:
        # "properties.desired" itself would overwrite the base's inference and download settings.
        assert key.startswith("properties.desired."), key


def _set_path(document: dict, path: list[str], value: Any) -> dict:
    if len(path) == 1:
        return {**document, path[0]: value}
    return {**document, path[0]: _set_path(document.get(path[0], {}), path[1:], value)}


def _deep_path(path: list[str], value: Any) -> dict:
    return {path[0]: _deep_path(path[1:], value)} if len(path) > 1 else {path[0]: value}


def _apply(base: dict, layers: list[dict], deep: bool) -> dict:
    """IoT Hub's module twin for a device: the base deployment's properties.desired, then
    each layered deployment's properties.desired.<path> in ascending priority, the higher
    one winning the same path. ``deep`` merges objects at the path instead of replacing
    them; the ring files must give the same result either way."""
    desired = dict(base)
    for layer in layers:
        for key, value in layer.items():
            path = key.split(".")[2:]
            desired = merge_patch(desired, _deep_path(path, value)) if deep else _set_path(desired, path, value)
    return desired


def test_merged_ring_deployments_parse_for_every_combination(manifest, plan):
    base = manifest["twinfer"]["properties.desired"]
    by_priority = sorted(RINGS, key=lambda ring: min(plan[ring]["priorities"]))
    for count in range(len(RINGS) + 1):
        for applied in itertools.combinations(by_priority, count):
            layers = [_ring_content(ring) for ring in applied]
            replaced, merged = _apply(base, layers, deep=False), _apply(base, layers, deep=True)
            assert replaced == merged, applied
            state = parse_desired(replaced)
            assert len(compact(replaced).encode()) < MAX_DOCUMENT_BYTES
            winner = layers[-1]["properties.desired.model"] if layers else base["model"]
            assert (state.model.name, state.model.version, state.model.sha256) == (
                winner["name"], winner["version"], winner["sha256"]
            ), applied
            # the base's other settings survive every layer
            assert state.score_threshold == base["inference"]["score_threshold"]
            assert state.max_bytes_per_second == base["download"]["max_bytes_per_second"]


@pytest.mark.processes
def test_readme_recipe_turns_the_template_into_a_manifest():
    """The README's generator: placeholders filled, createOptions serialised, $edgeAgent,
    $edgeHub and $upstream left alone."""
    recipe = re.search(r"python3 - <<'PY' > deployment\.json\n(.*?)\nPY\n", DEPLOYMENTS_README.read_text(), re.S)
    script = recipe.group(1)
    env = {
        **os.environ, "MODULE_IMAGE": "example.azurecr.io/twinfer:9.9.9",
        "CONTAINER_REGISTRY_ADDRESS": "example.azurecr.io", "CONTAINER_REGISTRY_USERNAME": "user",
        "CONTAINER_REGISTRY_PASSWORD": 'p"a\\ss+/=', "TWINFER_API_TOKENS": SAMPLE_TOKEN,
    }
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    generated = json.loads(result.stdout)["modulesContent"]
    template = load_json(TEMPLATE)["modulesContent"]
    agent = generated["$edgeAgent"]["properties.desired"]
    assert agent["modules"]["twinfer"]["settings"]["image"] == "example.azurecr.io/twinfer:9.9.9"
    assert agent["runtime"]["settings"]["registryCredentials"]["twinferregistry"]["password"] == 'p"a\\ss+/='
    assert agent["modules"]["twinfer"]["env"]["TWINFER_API_TOKENS"] == {"value": SAMPLE_TOKEN}
    template_agent = template["$edgeAgent"]["properties.desired"]
    for group in ("systemModules", "modules"):
        for name, module in agent[group].items():
            options = module["settings"]["createOptions"]
            assert isinstance(options, str) and len(options.encode()) <= CREATE_OPTIONS_MAX_BYTES
            assert json.loads(options) == create_options(template_agent[group][name]["settings"])
    assert generated["$edgeHub"] == template["$edgeHub"]
    assert generated["twinfer"] == template["twinfer"]


# --- Prometheus -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool missing: `make test` installs it (Debian package prometheus, via ops/install-tools.sh)")
    return path


def run_promtool(promtool: str, *args: str) -> None:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.processes
def test_promtool_checks_the_config(promtool):
    assert RULES.name in PROMETHEUS_CONFIG.read_text()
    run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG))


@pytest.mark.processes
def test_promtool_checks_the_rules(promtool):
    run_promtool(promtool, "check", "rules", str(RULES))


@pytest.mark.processes
def test_promtool_unit_tests_the_rules(promtool):
    tested = set(re.findall(r"^\s*alertname:\s*(\S+)", RULES_TEST.read_text(), re.M))
    assert {"TwinferModelUpdateFailed", "TwinferDetectLatencyHigh"} <= tested
    assert tested == set(_alerts()), "every alert has a unit test"
    run_promtool(promtool, "test", "rules", str(RULES_TEST))


def _alerts() -> dict[str, str]:
    """alert name -> its block of the rules file."""
    text = RULES.read_text()
    blocks = re.split(r"^\s*- (?=alert:|record:)", text, flags=re.M)
    return {
        re.match(r"alert:\s*(\S+)", block).group(1): block for block in blocks if block.startswith("alert:")
    }


def test_every_alert_has_severity_summary_and_description():
    alerts = _alerts()
    assert len(alerts) >= 6
    for name, block in alerts.items():
        assert re.search(r"^\s+severity:\s*(critical|warning|info)\s*$", block, re.M), name
        assert re.search(r"^\s+summary:\s*\S", block, re.M), name
        assert re.search(r"^\s+description:\s*\S", block, re.M), name


# --- metric names -----------------------------------------------------------------------


def declared_metrics() -> dict[str, dict]:
    """family name (as declared) -> {kind, labels, samples, extra}: the sample names prometheus-client
    exposes. Counters are exposed as <name>_total whether or not the declared name ends in
    _total (the client strips and re-adds it); histograms as _bucket/_count/_sum; gauges as
    declared. In multiprocess mode there are no _created samples, and gauges in the
    live/all modes gain a pid label."""
    found = {}
    for path in METRIC_MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            kind = node.func.id
            if kind not in ("Counter", "Gauge", "Histogram", "Summary"):
                continue
            name = ast.literal_eval(node.args[0])
            kwargs = {kw.arg: kw.value for kw in node.keywords}
            labels_node = node.args[2] if len(node.args) > 2 else kwargs.get("labelnames")
            labels = set(ast.literal_eval(labels_node)) if labels_node is not None else set()
            extra: dict[str, set[str]] = {}
            if kind == "Counter":
                samples = {name.removesuffix("_total") + "_total"}
            elif kind == "Histogram":
                samples = {name + "_bucket", name + "_count", name + "_sum"}
                extra = {name + "_bucket": {"le"}}
            elif kind == "Summary":
                samples = {name + "_count", name + "_sum"}
            else:
                samples = {name}
            mode = ast.literal_eval(kwargs["multiprocess_mode"]) if "multiprocess_mode" in kwargs else "all"
            if kind == "Gauge" and mode in ("all", "liveall"):
                labels.add("pid")
            found[name] = {"kind": kind, "labels": labels, "samples": samples, "extra": extra}
    return found


def exposed_samples() -> dict[str, set[str]]:
    """sample name -> the labels it may carry (scrape labels job and instance included)."""
    result = {}
    for family in declared_metrics().values():
        for sample in family["samples"]:
            result[sample] = family["labels"] | family["extra"].get(sample, set()) | {"job", "instance"}
    return result


def test_metric_declarations_are_found():
    families = declared_metrics()
    assert "twinfer_request_errors_total" in families and "twinfer_http_request_duration_seconds" in families
    assert "twinfer_download_bytes_total" in exposed_samples()
    assert "twinfer_http_request_duration_seconds_bucket" in exposed_samples()


_EXPOSITION_SCRIPT = r"""
import json, re
from prometheus_client import Counter, Gauge, Histogram, Summary
from workers import metrics as worker_metrics
from service import metrics as service_metrics
for module in (worker_metrics, service_metrics):
    for metric in vars(module).values():
        if not isinstance(metric, (Counter, Gauge, Histogram, Summary)):
            continue
        child = metric.labels(*["x"] * len(metric._labelnames)) if metric._labelnames else metric
        if isinstance(metric, Counter):
            child.inc()
        elif isinstance(metric, Gauge):
            child.set(1)
        else:
            child.observe(0.1)
samples = {}
for line in worker_metrics.exposition().decode().splitlines():
    if line and not line.startswith("#"):
        name, labels = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line).groups()
        samples.setdefault(name, set()).update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', labels or ""))
print(json.dumps({name: sorted(labels) for name, labels in samples.items()}))
"""


@pytest.mark.processes
def test_derived_names_match_a_real_multiprocess_exposition(tmp_path):
    """Every metric touched once, in prometheus-client multiprocess mode as the module runs."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", _EXPOSITION_SCRIPT],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    real = {name: set(labels) | {"job", "instance"} for name, labels in json.loads(result.stdout).items()}
    assert real == exposed_samples()


OPS_METRIC_FILES = (RULES, RULES_TEST, DASHBOARD)


@pytest.mark.parametrize("path", OPS_METRIC_FILES, ids=lambda p: p.name)
def test_every_referenced_metric_exists(path):
    exposed = exposed_samples()
    referenced = set(re.findall(r"\btwinfer_[a-z0-9_]+", path.read_text()))
    assert referenced, path
    unknown = sorted(referenced - set(exposed))
    assert not unknown, f"{path.name} references metrics the code does not expose: {unknown}"


@pytest.mark.parametrize("path", OPS_METRIC_FILES, ids=lambda p: p.name)
def test_every_selector_uses_labels_the_metric_has(path):
    exposed = exposed_samples()
    text = path.read_text().replace('\\"', '"')
    for metric, matchers in re.findall(r"\b(twinfer_[a-z0-9_]+)\{([^}]*)\}", text):
        used = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
        assert used <= exposed[metric], f"{path.name}: {metric} has no label(s) {sorted(used - exposed[metric])}"


def test_the_dashboard_shows_every_metric():
    text = DASHBOARD.read_text()
    for name, family in declared_metrics().items():
        assert any(sample in text for sample in family["samples"]), f"no dashboard panel uses {name}"


MODEL_FILTER = 'model=~"$model"'


def _model_samples() -> dict[str, str]:
    """sample name -> family, for every metric family with a model label."""
    return {
        sample: name for name, family in declared_metrics().items() if "model" in family["labels"]
        for sample in family["samples"]
    }


def test_dashboard_has_a_model_variable():
    dashboard = load_json(DASHBOARD)
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    model = variables["model"]
    assert model["type"] == "query" and model["datasource"]["uid"] == "${DS_PROMETHEUS}"
    query = model["query"]["query"] if isinstance(model["query"], dict) else model["query"]
    assert re.sub(r"\s", "", query) == "label_values(twinfer_worker_model_info,model)"
    assert model["multi"] is True and model["includeAll"] is True


def test_every_dashboard_query_of_a_model_metric_filters_on_the_model_variable():
    """Every selector of a metric with a model label (request and inference latency, model
    reloads, worker models, downloads...) follows the dashboard's model variable."""
    samples = _model_samples()
    families = set(samples.values())
    assert {
        "twinfer_http_request_duration_seconds", "twinfer_inference_duration_seconds", "twinfer_model_reloads_total",
    } <= families
    seen = set()
    for panel in load_json(DASHBOARD)["panels"]:
        for target in panel.get("targets", []):
            for sample, matchers in re.findall(r"\b(twinfer_[a-z0-9_]+)(\{[^}]*\})?", target["expr"]):
                if sample in samples:
                    seen.add(samples[sample])
                    assert MODEL_FILTER in matchers, f"{panel['title']}: {sample} without {MODEL_FILTER}"
    assert seen == families, f"no panel shows {sorted(families - seen)} by model"


def test_dashboard_uses_the_datasource_variable():
    dashboard = load_json(DASHBOARD)
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    titles = {panel["title"] for panel in panels}
    assert len(titles) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}" and target["expr"], panel["title"]
