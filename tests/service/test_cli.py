"""The operator CLI, run as an operator runs it: ``python -m service <command>`` in a subprocess."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.cli import cli
from tests.support.paths import MODELS, PROJECT_ROOT
from tests.support.waiting import wait_until

pytestmark = pytest.mark.processes  # every test here starts processes

COMMANDS = ["run", "validate", "set-model", "apply-patch", "bundle", "twin-patch", "delta", "status", "keygen"]
FACE = MODELS / "blazeface_short_range.tflite"


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("face\n")
    return path


@pytest.fixture(scope="module")
def face_bundle(tmp_path_factory, labels) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bundle") / "face_1.0.zip"
    done = cli("bundle", str(FACE), "--labels", str(labels), "--name", "face", "--version", "1.0",
               "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


# --- help -------------------------------------------------------------------------------------


def test_top_level_help_lists_every_command():
    done = cli("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m service")
    for command in COMMANDS:
        assert command in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    done = cli(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m service {command}")
    assert "options:" in done.stdout


@pytest.mark.parametrize("command", ["twin-patch", "set-model"])
def test_rollout_help_describes_pool_models_and_removal(command):
    text = " ".join(cli(command, "--help").stdout.split())
    assert "--pool roll the bundle out as models.<--name>" in text
    assert "--remove NAME take model NAME out of the pool: models.NAME set to null" in text
    assert "--remove plates" in text  # an example


def test_status_help_describes_every_model():
    text = " ".join(cli("status", "--help").stdout.split())
    assert "every model of the manifest" in text and "models.<name>" in text


# --- bundle -----------------------------------------------------------------------------------


def test_bundle_prints_the_bundles_hashes_and_the_validated_model(face_bundle, labels):
    out, result = face_bundle
    data = out.read_bytes()
    assert result["path"] == str(out.resolve())
    assert result["size"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["md5"] == hashlib.md5(data).hexdigest()
    assert result["md5_base64"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert (result["decoder"], result["format"], result["input"], result["labels"]) == (
        "blazeface", "tflite", {"width": 128, "height": 128}, 1
    )
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["blazeface_short_range.tflite", "labels.txt"]
        assert archive.read("blazeface_short_range.tflite") == FACE.read_bytes()
        assert archive.read("labels.txt") == labels.read_bytes()
        assert archive.testzip() is None


def test_bundle_human_output_and_metadata_and_reproducible_bytes(tmp_path, labels, face_bundle):
    metadata = tmp_path / "face-meta.json"
    metadata.write_text(json.dumps({"score_threshold": 0.6}))
    out = tmp_path / "with-meta.zip"
    done = cli("bundle", str(FACE), "--labels", str(labels), "--metadata", str(metadata), "-o", str(out))
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    fields = dict(line.split(None, 1) for line in done.stdout.splitlines() if line and not line.startswith(" "))
    assert fields["sha256"] == hashlib.sha256(data).hexdigest()
    assert fields["md5"] == hashlib.md5(data).hexdigest()
    assert fields["size"] == f"{len(data)} bytes"
    assert fields["decoder"] == "blazeface" and fields["input"] == "128x128" and fields["labels"] == "1"
    assert base64.b64encode(hashlib.md5(data).digest()).decode() in done.stdout
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["blazeface_short_range.tflite", "labels.txt", "twinfer.json"]
        assert json.loads(archive.read("twinfer.json")) == {"score_threshold": 0.6}
    # Fixed timestamps: the same inputs give the same bytes, so the same hashes.
    again = tmp_path / "again.zip"
    assert cli("bundle", str(FACE), "--labels", str(labels), "-o", str(again)).returncode == 0
    assert hashlib.sha256(again.read_bytes()).hexdigest() == face_bundle[1]["sha256"]


def test_bundle_files_are_readable_by_other_users_as_the_umask_allows(tmp_path, labels):
    """A web server running as another user must be able to serve what ``bundle`` writes."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = tmp_path / "face.zip"
    subprocess.run([sys.executable, "-m", "service", "bundle", str(FACE), "--labels", str(labels), "-o", str(out),
                    "--compressed"], cwd=PROJECT_ROOT, env=env, check=True, capture_output=True,
                   preexec_fn=lambda: os.umask(0o022), timeout=120)
    assert {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()} == {
        "face.zip": 0o644, "face.zip.zst": 0o644}


def test_bundle_of_a_garbage_model_fails_clearly_and_writes_nothing(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model at all " * 100)
    out = tmp_path / "out" / "junk.zip"
    out.parent.mkdir()
    done = cli("bundle", str(junk), "-o", str(out))
    assert done.returncode != 0
    assert "does not validate" in done.stderr and "junk.onnx" in done.stderr, done.stderr
    assert "no bundle written" in done.stderr
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary file either


@pytest.mark.parametrize(
    "args, message",
    [
        (["--labels", "README.md"], "must end in .txt"),
        (["--name", "face"], "--name and --version together"),
        (["--name", "../x", "--version", "1"], "must be 1-128"),
    ],
)
def test_bundle_refuses_bad_inputs_before_building(tmp_path, args, message):
    out = tmp_path / "x.zip"
    done = cli("bundle", str(FACE), *args, "-o", str(out))
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert not out.exists()


# --- twin-patch -------------------------------------------------------------------------------


def test_twin_patch_passes_the_device_parser_with_reference_keys(face_bundle):
    from service.update.desired import parse_desired

    out, result = face_bundle
    data = out.read_bytes()
    url = "https://account.blob.core.windows.net/models/face_1.0.zip?sv=2024&sig=secret"
    done = cli("twin-patch", "--url", url, "--bundle", str(out), "--name", "face", "--version", "1.0",
               "--threshold", "0.6", "--max-bps", "65536", "--reference")
    assert done.returncode == 0, done.stderr
    patch = json.loads(done.stdout)
    state = parse_desired(patch)
    assert (state.model.name, state.model.version, state.model.url) == ("face", "1.0", url)
    assert state.model.sha256 == hashlib.sha256(data).hexdigest()
    assert state.model.md5 == hashlib.md5(data).hexdigest()
    assert state.model.size == len(data)
    assert state.score_threshold == 0.6 and state.max_bytes_per_second == 65536
    assert patch["ContentMD5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert patch["DownloadUrl"] == url and patch["FileName"] == "face_1.0.zip"
    reference = parse_desired({k: patch[k] for k in ("FileName", "DownloadUrl", "ContentMD5")}).model
    assert (reference.name, reference.version, reference.md5) == ("face", "1.0", state.model.md5)
    # The ready az command is on stderr and carries the same patch.
    line = next(l for l in done.stderr.splitlines() if l.startswith("az iot hub module-twin update"))
    words = shlex.split(line)
    assert words[words.index("--hub-name") + 1] == "<HUB>" and words[words.index("--device-id") + 1] == "<DEVICE>"
    assert words[words.index("--module-id") + 1] == "twinfer"
    assert json.loads(words[words.index("--desired") + 1]) == patch


def test_twin_patch_from_digests_and_az_only(face_bundle):
    from service.update.desired import parse_desired

    _, result = face_bundle
    done = cli("twin-patch", "--url", "https://files.local/face.zip", "--sha256", result["sha256"],
               "--md5", result["md5_base64"], "--size", str(result["size"]), "--name", "face", "--version", "1.0",
               "--az", "--hub-name", "myhub", "--device-id", "cam-01")
    assert done.returncode == 0, done.stderr
    words = shlex.split(done.stdout.strip())
    assert words[:5] == ["az", "iot", "hub", "module-twin", "update"]
    assert words[words.index("--hub-name") + 1] == "myhub" and words[words.index("--device-id") + 1] == "cam-01"
    patch = json.loads(words[words.index("--desired") + 1])
    unused = {key: None for key in ("signature", "allow_downgrade", "urgent", "delta", "compression", "variants",
                                    "variant")}
    assert patch == {"model": {"name": "face", "version": "1.0", "url": "https://files.local/face.zip",
                               "sha256": result["sha256"], "md5": result["md5"], "size": result["size"], **unused}}
    assert parse_desired(patch).model.sha256 == result["sha256"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sha256", "abc"], "model.sha256 must be 64 hex digits"),
        (["--sha256", "a" * 64, "--reference"], "--reference needs the bundle's MD5"),
        (["--sha256", "a" * 64, "--threshold", "2"], "score_threshold"),
        (["--bundle", "README.md"], "is not a ZIP file"),
    ],
)
def test_twin_patch_refuses_what_the_device_would_refuse(args, message):
    done = cli("twin-patch", "--url", "https://files.local/m.zip", "--name", "m", "--version", "1", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stdout == ""


def test_twin_patch_for_a_pool_model_prints_models_name(face_bundle):
    from service.update.desired import MODEL_KEYS, parse_desired
    from service.update.pool_desired import lane_documents

    out, result = face_bundle
    done = cli("twin-patch", "--url", "https://files.local/face_1.0.zip", "--bundle", str(out), "--name", "face",
               "--version", "1.0", "--threshold", "0.6", "--window", "01:00-05:00", "--pool")
    assert done.returncode == 0, done.stderr
    patch = json.loads(done.stdout)
    assert set(patch) == {"models", "download"}  # no model (the default), no reference keys, no inference
    entry = patch["models"]["face"]
    assert set(entry) == set(MODEL_KEYS) - {"name"} | {"inference"}  # the key is the name
    assert (entry["version"], entry["sha256"], entry["md5"], entry["size"]) == (
        "1.0", result["sha256"], result["md5"], result["size"])
    assert entry["signature"] is None and entry["delta"] is None and entry["compression"] is None  # nothing stale
    assert entry["inference"] == {"score_threshold": 0.6} and patch["download"] == {"windows": ["01:00-05:00"]}
    default, lanes = lane_documents(patch, set())
    assert parse_desired(default).model is None
    lane = parse_desired(lanes["face"])
    assert (lane.model.name, lane.model.version, lane.score_threshold) == ("face", "1.0", 0.6)
    words = shlex.split(next(l for l in done.stderr.splitlines() if l.startswith("az iot hub")))
    assert json.loads(words[words.index("--desired") + 1]) == patch
    refused = cli("twin-patch", "--url", "https://files.local/face_1.0.zip", "--bundle", str(out), "--name", "face",
                  "--version", "1.0", "--pool", "--reference")
    assert refused.returncode == 2 and "--reference describes the default model" in refused.stderr


def test_twin_patch_remove_prints_the_null_that_takes_a_model_out(face_bundle):
    done = cli("twin-patch", "--remove", "plates", "--remove", "cars", "--az")
    assert done.returncode == 0, done.stderr
    words = shlex.split(done.stdout.strip())
    assert json.loads(words[words.index("--desired") + 1]) == {"models": {"plates": None, "cars": None}}
    assert json.loads(cli("twin-patch", "--remove", "plates").stdout) == {"models": {"plates": None}}
    # With a rollout of the same name as the default model: the pool model becomes the default.
    out, _ = face_bundle
    both = cli("twin-patch", "--url", "https://files.local/f.zip", "--bundle", str(out), "--name", "face",
               "--version", "1.0", "--remove", "face")
    assert both.returncode == 0, both.stderr
    patch = json.loads(both.stdout)
    assert patch["model"]["name"] == "face" and patch["models"] == {"face": None}
    for args, message in [(["--remove", "plates", "--threshold", "0.5"], "--threshold: options of a rollout"),
                          (["--remove", "../x"], "--remove '../x'"),
                          (["--url", "https://files.local/f.zip"], "required: --name, --version"),
                          (["--name", "face", "--version", "1.0", "--sha256", "a" * 64], "required: --url")]:
        refused = cli("twin-patch", *args)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
        assert refused.stdout == ""


# --- status -----------------------------------------------------------------------------------


@pytest.fixture
def pool_store(tmp_path) -> Path:
    """A store whose manifest serves two models: face (the default) and plates, real model files."""
    from twinfer.manifest import publish

    store = tmp_path / "store"
    for name, version in (("face", "1.0"), ("plates", "2.1")):
        directory = store / "models" / name / version
        directory.mkdir(parents=True)
        (directory / FACE.name).write_bytes(FACE.read_bytes())
        (directory / "labels.txt").write_text("face\n")
    publish(store, "face", "1.0", "models/face/1.0", "tflite", "blazeface", default=True)
    publish(store, "plates", "2.1", "models/plates/2.1", "tflite", "blazeface", 0.5)
    return store


def test_status_on_an_empty_store(tmp_path):
    store = tmp_path / "store"
    done = cli("status", store=store)
    assert done.returncode == 0, done.stderr
    assert "nothing published yet" in done.stdout and "0 live" in done.stdout
    status = json.loads(cli("status", "--json", store=store).stdout)
    assert status["store"] == str(store.resolve()) and status["active"] is None and status["models"] == []
    assert status["versions"] == [] and status["downloads"] == [] and status["workers"] == [] and status["twin"] is None


def test_status_shows_the_bootstrapped_model_downloads_and_twin_state(bootstrapped_store):
    store = bootstrapped_store
    part = store / "staging" / "downloads" / "face-2.0.part"
    part.write_bytes(b"x" * 1000)
    sidecar = {"url": "https://files.local/face.zip", "etag": "e", "total": 4000}
    Path(str(part) + ".json").write_text(json.dumps(sidecar))
    (store / "twin").mkdir(exist_ok=True)
    (store / "twin" / "reported.json").write_text(json.dumps({"model": {
        "state": "failed", "target": {"name": "face", "version": "2.0"},
        "last_error": {"reason": "checksum_mismatch", "message": "SHA-256 mismatch", "at": "2026-01-01T00:00:00+00:00"},
        "variant": {"name": "fp32", "cpu": "x86_64 CPU with AVX-512 VNNI", "verification": None, "skipped": [],
                    "rejected": [{"variant": "int8", "reason": "variant_rejected", "message": "at F1 0.000"}]},
    }}))
    done = cli("status", store=store)
    assert done.returncode == 0, done.stderr
    assert "variant    fp32  (x86_64 CPU with AVX-512 VNNI)" in done.stdout
    assert "  rejected int8: variant_rejected: at F1 0.000" in done.stdout
    assert "ssd-mobilenetv2-oidv4 1.0.0  generation 1  onnx  detection (ssd_anchors)" in done.stdout
    assert "face-2.0.part  1000   4000  25.0" in done.stdout
    assert "state failed" in done.stdout and "checksum_mismatch: SHA-256 mismatch" in done.stdout
    status = json.loads(cli("status", "--json", store=store).stdout)
    assert status["active"]["version"] == "1.0.0" and status["active"]["generation"] == 1
    assert status["active"]["present"] is True
    [version] = status["versions"]
    assert version["active"] is True and version["version"] == "1.0.0" and version["bytes"] > 1_000_000
    # A flat file of an earlier release, of a model the store does not know: name and version untold.
    assert status["downloads"] == [{"file": "face-2.0.part", "name": None, "version": None, "bytes": 1000,
                                    "total": 4000, "percent": 25.0}]
    assert [m["name"] for m in status["models"]] == ["ssd-mobilenetv2-oidv4"] and status["models"][0]["default"]
    assert status["twin"]["state"] == "failed" and status["twin"]["last_error"]["reason"] == "checksum_mismatch"
    assert status["twin"]["variant"]["rejected"][0]["variant"] == "int8" and status["active"]["variant"] is None


def test_status_lists_every_model_of_the_pool_its_downloads_workers_and_twin_states(pool_store):
    from twinfer.worker_state import WorkerState

    store = pool_store
    downloads = store / "staging" / "downloads"
    (downloads / "plates").mkdir(parents=True)
    (downloads / "plates" / "2.2.part").write_bytes(b"x" * 500)
    (downloads / "plates" / "2.2.part.json").write_text(json.dumps({"total": 2000}))
    (downloads / "plates-2.0.part").write_bytes(b"x" * 10)  # the flat layout of an earlier release
    worker = WorkerState(os.getpid())  # a live pid: this test's
    worker.record_loaded("face", 1, "1.0", 1_700_000_000.0, True)
    worker.record_loaded("plates", 2, "2.1", 1_700_000_100.0, False)
    worker.record_error("plates", 3, "out of memory")
    worker.save(store)
    (store / "twin").mkdir()
    active = {"state": "active", "target": {"name": "face", "version": "1.0"}, "desired_version": 4}
    (store / "twin" / "reported.json").write_text(json.dumps({
        "model": active,
        "models": {"face": active, "cars": None, "plates": {
            "state": "downloading", "target": {"name": "plates", "version": "2.2"}, "desired_version": 4,
            "progress": {"bytes": 500, "total": 2000, "percent": 25.0},
            "active": {"name": "plates", "version": "2.1", "generation": 2}}},
    }))
    status = json.loads(cli("status", "--json", store=store).stdout)
    assert (status["manifest_generation"], status["default"]) == (2, "face")
    assert [(m["name"], m["version"], m["generation"], m["default"], m["present"], m["staged_versions"])
            for m in status["models"]] == [("face", "1.0", 1, True, True, ["1.0"]),
                                           ("plates", "2.1", 2, False, True, ["2.1"])]
    assert status["active"] == status["models"][0]  # the default model's record, as before the pool
    assert status["models"][1]["score_threshold"] == 0.5
    assert [(v["name"], v["version"], v["active"]) for v in status["versions"]] == [
        ("face", "1.0", True), ("plates", "2.1", True)]
    assert status["downloads"] == [
        {"file": "plates/2.2.part", "name": "plates", "version": "2.2", "bytes": 500, "total": 2000, "percent": 25.0},
        {"file": "plates-2.0.part", "name": "plates", "version": "2.0", "bytes": 10, "total": None, "percent": None},
    ]
    [seen] = status["workers"]
    assert (seen["pid"], seen["name"], seen["generation"], seen["version"]) == (os.getpid(), "face", 1, "1.0")
    assert [(m["name"], m["generation"], m["version"]) for m in seen["models"]] == [
        ("face", 1, "1.0"), ("plates", 2, "2.1")]
    assert (seen["last_error"]["model"], seen["last_error"]["message"]) == ("plates", "out of memory")
    twin = status["twin"]
    assert twin["state"] == "active" and twin["target"] == {"name": "face", "version": "1.0"}
    assert [(m["name"], m["state"]) for m in twin["models"]] == [("face", "active"), ("plates", "downloading")]
    assert twin["models"][1]["progress"]["percent"] == 25.0  # a removed model (null) is not listed

    text = cli("status", store=store).stdout
    assert "default    face 1.0  generation 1  tflite  detection (blazeface)" in text
    assert "models (2 in the manifest, generation 2; * the default model)" in text
    rows = {line.split()[1 if line.lstrip().startswith("*") else 0]: line for line in text.splitlines()
            if line.startswith("  ") and "tflite" in line}
    assert rows["face"].lstrip().startswith("*") and "1.0" in rows["face"]
    assert not rows["plates"].lstrip().startswith("*") and " 2.1 " in rows["plates"]
    assert "plates  2.2      plates/2.2.part  500    2000  25.0" in text
    assert "plates  2.0      plates-2.0.part  10     ?     ?" in text
    assert "twin models (2 reported under models.<name>)" in text
    assert "plates  downloading  2.1 gen 2  plates 2.2  4" in text
    worker_rows = [line.split() for line in text.splitlines() if line.strip().startswith(str(os.getpid()))]
    assert [row[1:4] for row in worker_rows] == [["face", "1", "1.0"], ["plates", "2", "2.1"]]
    assert "generation 3: out of memory" in text


def test_status_while_the_service_runs(tmp_path):
    from tests.support.service_process import ServiceProcess

    store = tmp_path / "store"
    with ServiceProcess.start(store, workers=1):
        def active() -> dict | None:
            status = json.loads(cli("status", "--json", store=store).stdout)
            return status if status["workers"] and (status["twin"] or {}).get("state") == "active" else None

        status = wait_until(active, "status shows a worker and an active twin", 30, interval=0.3)
        [worker] = status["workers"]
        assert (worker["generation"], worker["version"], worker["last_error"]) == (1, "1.0.0", None)
        assert worker["loaded_at"] is not None
        assert status["active"]["version"] == "1.0.0"
        text = cli("status", store=store).stdout
        assert "workers (1 live)" in text and str(worker["pid"]) in text
    assert json.loads(cli("status", "--json", store=store).stdout)["workers"] == []


# --- set-model (kept working after the move to service/commands) -------------------------------


def test_set_model_writes_the_local_twin(tmp_path):
    from service.update.desired import parse_desired
    from twinfer.manifest import MANIFEST_FILE

    store = tmp_path / "store"
    store.mkdir()
    (store / MANIFEST_FILE).write_text("{}")  # a service's store (set-model refuses any other directory)
    args = ["set-model", "--name", "face", "--version", "2.0", "--url", "http://files.local/face.zip",
            "--sha256", "b" * 64, "--threshold", "0.4"]
    assert cli(*args, store=store).returncode == 0
    done = cli(*args, store=store)
    assert done.returncode == 0 and "$version 2" in done.stdout, done.stderr
    desired = json.loads((store / "twin" / "desired.json").read_text())
    state = parse_desired(desired)
    assert (state.version, state.model.name, state.score_threshold) == (2, "face", 0.4)
    bad = cli("set-model", "--name", "face", "--version", "2.0", "--url", "ftp://x/y.zip", "--sha256", "b" * 64,
              store=store)
    assert bad.returncode == 2 and "http(s) URL" in bad.stderr


def test_set_model_and_twin_patch_apply_pool_models_and_removals_to_the_local_twin(pool_store):
    from service.commands.local_apply import desired_models

    store = pool_store
    desired_path = store / "twin" / "desired.json"
    rollout = ["--version", "3.0", "--url", "http://files.local/cars.zip", "--sha256", "c" * 64]
    done = cli("set-model", "--pool", "--name", "cars", *rollout, "--threshold", "0.3", store=store)
    assert done.returncode == 0 and "$version 1" in done.stdout, done.stderr
    done = cli("twin-patch", "--pool", "--name", "bikes", *rollout, "--urgent", "--apply-local", store=store)
    assert done.returncode == 0 and "$version 2" in done.stdout, done.stderr
    desired = json.loads(desired_path.read_text())
    assert "model" not in desired and set(desired["models"]) == {"cars", "bikes"}
    cars = desired["models"]["cars"]
    assert cars["inference"] == {"score_threshold": 0.3} and "name" not in cars
    assert desired["models"]["bikes"]["urgent"] is True
    assert [(m.name, m.version) for m in desired_models(desired)[1:]] == [("bikes", "3.0"), ("cars", "3.0")]

    # A new rollout of cars leaves nothing of the last one (the merge sees the nulls).
    done = cli("set-model", "--pool", "--name", "bikes", *rollout, store=store)
    assert done.returncode == 0, done.stderr
    assert "urgent" not in json.loads(desired_path.read_text())["models"]["bikes"]

    # Removal: the null deletes the key; plates (in the manifest, not in the twin) may go too.
    done = cli("set-model", "--remove", "cars", store=store)
    assert done.returncode == 0 and "$version 4" in done.stdout, done.stderr
    assert set(json.loads(desired_path.read_text())["models"]) == {"bikes"}
    printed = cli("twin-patch", "--remove", "plates")
    (store / "remove.json").write_text(printed.stdout)
    assert cli("apply-patch", str(store / "remove.json"), store=store).returncode == 0

    before = desired_path.read_text()
    for args, message in [
        (["--remove", "cars"], "cars is not a model of the pool"),
        (["--remove", "face"], "face is the default model: it is not removed but replaced"),
        (["--pool", "--name", "face", *rollout], "face is the default model: roll it out as model"),
        (["--name", "bikes", *rollout], "'bikes' is both model (the default) and a key of models"),
        (["--pool", "--name", "bikes", *rollout, "--remove", "bikes"], "exclude each other"),
    ]:
        refused = cli("set-model", *args, store=store)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
    assert desired_path.read_text() == before  # nothing written

    # A pool model made the default in one patch: model names it, its models key goes.
    done = cli("set-model", "--name", "bikes", *rollout, "--remove", "bikes", store=store)
    assert done.returncode == 0, done.stderr
    desired = json.loads(desired_path.read_text())
    assert desired["model"]["name"] == "bikes" and "bikes" not in desired.get("models", {})


# --- narrow links: download settings and deltas ------------------------------------------------


def test_twin_patch_carries_windows_range_size_and_urgency(face_bundle):
    from service.update.desired import parse_desired

    out, _ = face_bundle
    done = cli("twin-patch", "--url", "https://files.local/face.zip", "--bundle", str(out), "--name", "face",
               "--version", "1.0", "--window", "01:00-05:00@65536", "--window", "22:00-23:30",
               "--range-bytes", "1048576", "--urgent")
    assert done.returncode == 0, done.stderr
    patch = json.loads(done.stdout)
    assert patch["download"] == {"windows": ["01:00-05:00@65536", "22:00-23:30"], "range_bytes": 1048576}
    state = parse_desired(patch)
    assert state.model.urgent and [w.describe() for w in state.windows] == ["01:00-05:00@65536", "22:00-23:30"]
    refused = cli("twin-patch", "--url", "https://files.local/face.zip", "--bundle", str(out), "--name", "face",
                  "--version", "1.0", "--window", "1:00-5:00")
    assert refused.returncode == 2 and "device would refuse" in refused.stderr


def test_delta_writes_a_patch_that_rebuilds_the_bundle_and_prints_model_delta(tmp_path, face_bundle, labels):
    from service.update.delta import apply_patch
    from service.update.desired import parse_desired

    base, _ = face_bundle
    metadata = tmp_path / "twinfer.json"
    metadata.write_text(json.dumps({"score_threshold": 0.7}))
    new = tmp_path / "face_1.1.zip"
    built = cli("bundle", str(FACE), "--labels", str(labels), "--metadata", str(metadata), "--name", "face",
                "--version", "1.1", "-o", str(new))
    assert built.returncode == 0, built.stderr
    patch_file = tmp_path / "face_1.0-1.1.zst"
    done = cli("delta", "--base", str(base), "--base-version", "1.0", "--bundle", str(new),
               "--patch-url", "https://files.local/face_1.0-1.1.zst", "--patch-out", str(patch_file),
               "--url", "https://files.local/face_1.1.zip", "--name", "face", "--version", "1.1")
    assert done.returncode == 0, done.stderr
    patch = json.loads(done.stdout)
    delta = parse_desired(patch).model.delta
    data = patch_file.read_bytes()
    assert (delta.base_version, delta.base_sha256) == ("1.0", hashlib.sha256(base.read_bytes()).hexdigest())
    assert (delta.sha256, delta.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert len(data) < new.stat().st_size / 20  # a metadata change costs a few hundred bytes
    rebuilt = tmp_path / "rebuilt.zip"
    apply_patch(base, patch_file, rebuilt, max_output_bytes=new.stat().st_size)
    assert rebuilt.read_bytes() == new.read_bytes()
    assert patch["model"]["sha256"] == hashlib.sha256(new.read_bytes()).hexdigest()
    assert "% of the" in done.stderr


def test_delta_refuses_a_missing_base(tmp_path, face_bundle):
    out, _ = face_bundle
    done = cli("delta", "--base", str(tmp_path / "nope.zip"), "--base-version", "0.9", "--bundle", str(out),
               "--patch-url", "https://files.local/p.zst", "--patch-out", str(tmp_path / "p.zst"),
               "--url", "https://files.local/face.zip", "--name", "face", "--version", "1.0")
    assert done.returncode == 2 and "does not exist" in done.stderr and not (tmp_path / "p.zst").exists()


def test_bundle_compressed_for_the_wire_and_twin_patch_offers_it(tmp_path, labels):
    from service.update.desired import parse_desired

    out = tmp_path / "face_1.2.zip"
    built = cli("bundle", str(FACE), "--labels", str(labels), "--name", "face", "--version", "1.2",
                "-o", str(out), "--compressed", "--json")
    assert built.returncode == 0, built.stderr
    packed = Path(json.loads(built.stdout)["compressed"]["path"])
    assert packed == out.with_name("face_1.2.zip.zst") and packed.stat().st_size < out.stat().st_size
    done = cli("twin-patch", "--url", "https://files.local/face_1.2.zip.zst", "--bundle", str(out),
               "--compressed", str(packed), "--name", "face", "--version", "1.2")
    assert done.returncode == 0, done.stderr
    model = parse_desired(json.loads(done.stdout)).model
    assert (model.compression, model.size) == ("zstd", packed.stat().st_size)
    assert model.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()  # the bundle's hash, not the frame's
    other = tmp_path / "other.zst"
    other.write_bytes(packed.read_bytes()[:-8])
    refused = cli("twin-patch", "--url", "https://files.local/x.zst", "--bundle", str(out), "--compressed",
                  str(other), "--name", "face", "--version", "1.2")
    assert refused.returncode == 2 and "is not a zstd frame" in refused.stderr
