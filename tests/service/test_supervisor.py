"""The supervisor: embedded default on an empty store, signal forwarding, exit codes, headless mode."""
from __future__ import annotations

import os
import signal

import pytest
import requests

from tests.support.bundles import face_bundle, model_desired
from tests.support.http_server import FileServer
from tests.support.local_twin import LocalTwinFiles, is_active, model_status
from tests.support.service_process import ServiceProcess
from tests.support.waiting import wait_until
from twinfer.manifest import read_default


def _gunicorn_pid(service: ServiceProcess) -> int:
    children = _children(service.proc.pid)
    assert len(children) == 1
    return int(children[0])


def _children(pid: int) -> list[str]:
    return open(f"/proc/{pid}/task/{pid}/children").read().split()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.processes
def test_empty_store_gets_the_bundled_model_and_sigterm_stops_everything(tmp_path):
    store = tmp_path / "store"
    with ServiceProcess.start(store, workers=2) as service:
        manifest = read_default(store)
        assert (manifest.name, manifest.version, manifest.format) == ("ssd-mobilenetv2-oidv4", "1.0.0", "onnx")
        assert (store / "models/ssd-mobilenetv2-oidv4/1.0.0/model.onnx").is_file()
        assert [p.name for p in (store / "staging").iterdir()] == ["downloads"]
        gunicorn = _gunicorn_pid(service)
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(20) == 0
        wait_until(lambda: not _alive(gunicorn), "gunicorn gone after the supervisor stopped", 10)
    # A restart keeps the published model: no restaging, same generation.
    with ServiceProcess.start(store, workers=1) as service:
        assert read_default(store).generation == manifest.generation
        assert requests.get(service.url + "/readyz", timeout=5).status_code == 200


@pytest.mark.processes
def test_supervisor_exits_non_zero_when_gunicorn_dies(tmp_path):
    with ServiceProcess.start(tmp_path / "store", workers=1) as service:
        os.kill(_gunicorn_pid(service), signal.SIGKILL)
        assert service.proc.wait(20) != 0
        assert "gunicorn exited unexpectedly" in service.log()


@pytest.mark.processes
def test_headless_supervisor_updates_the_store_without_gunicorn_and_stops_cleanly(tmp_path):
    """TWINFER_SERVE=0: the twin and the update pipeline run, no pool is started, and a
    published model is active at once (no workers to wait for)."""
    env = {"TWINFER_SERVE": "0", "TWINFER_REPORT_INTERVAL": "0.05"}
    bundle = face_bundle()
    with FileServer({"/face_2.0.0.zip": bundle.data}) as files, ServiceProcess.start(
        tmp_path / "store", workers=2, extra_env=env, wait_ready=False
    ) as service:
        twin = LocalTwinFiles(service.store)
        twin.wait_reported(is_active("1.0.0"))
        twin.set_desired(model_desired("face", "2.0.0", files.url("/face_2.0.0.zip"), bundle))
        reported = twin.wait_reported(is_active("2.0.0"))
        assert model_status(reported)["rollout"] == {
            "generation": read_default(service.store).generation, "workers_on_new": 0, "workers": 0, "complete": True,
        }
        assert (service.store / "models/face/2.0.0/blazeface.tflite").is_file()
        assert _children(service.proc.pid) == []  # no gunicorn, and the validation child has exited
        with pytest.raises(requests.ConnectionError):
            requests.get(service.url + "/healthz", timeout=2)
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(20) == 0
    assert "headless supervisor stopped" in service.log()


@pytest.mark.processes
def test_readyz_is_503_until_a_model_is_published(tmp_path):
    """Workers started before any manifest answer /healthz, say 503 on /readyz, then load it."""
    from falcon import testing

    from service.bootstrap import ensure_active_model
    from service.repository import ModelRepository
    from twinfer.engines import EngineOptions
    from twinfer.settings_table import read
    from workers.app import create_app
    from workers.settings import WorkerSettings

    settings = WorkerSettings(store=tmp_path, max_body_bytes=10**6, max_image_pixels=10**7, engine=EngineOptions())
    client = testing.TestClient(create_app(settings))
    assert client.simulate_get("/healthz").status_code == 200
    assert client.simulate_get("/readyz").status_code == 503
    assert client.simulate_post("/detect", body=b"x", headers={"Content-Type": "image/png"}).status_code == 503
    repo = ModelRepository(tmp_path)
    repo.prepare()
    ensure_active_model(repo, read("TWINFER_DEFAULT_MODEL_DIR", {}), "demo", "1")
    wait_until(lambda: client.simulate_get("/readyz").status_code == 200, "model loaded", 30, interval=0.05)
    assert client.simulate_get("/readyz").json["version"] == "1"


@pytest.mark.parametrize("bad", ["not-a-number", "0"])
def test_bad_worker_setting_is_a_clear_startup_error(monkeypatch, bad):
    from service.settings import ServiceSettings

    monkeypatch.setenv("TWINFER_WORKERS", bad)
    with pytest.raises(ValueError, match="TWINFER_WORKERS"):
        ServiceSettings.from_env()


def test_relative_paths_reach_gunicorn_as_the_operator_meant_them(monkeypatch, tmp_path):
    """gunicorn runs in the package's directory: a relative TLS or token-file path is made
    absolute against the directory the supervisor was started in."""
    from service.settings import ServiceSettings
    from service.supervisor import gunicorn_env

    (tmp_path / "tls").mkdir()
    for name in ("cert.pem", "key.pem"):
        (tmp_path / "tls" / name).write_text("not read here")
    (tmp_path / "tokens").write_text("a-token-of-sixteen-chars\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TWINFER_STORE", "store")
    monkeypatch.setenv("TWINFER_TLS_CERT", "tls/cert.pem")
    monkeypatch.setenv("TWINFER_TLS_KEY", "tls/key.pem")
    monkeypatch.setenv("TWINFER_API_TOKENS_FILE", "tokens")
    env = gunicorn_env(ServiceSettings.from_env())
    assert env["TWINFER_TLS_CERT"] == str(tmp_path / "tls" / "cert.pem")
    assert env["TWINFER_TLS_KEY"] == str(tmp_path / "tls" / "key.pem")
    assert env["TWINFER_API_TOKENS_FILE"] == str(tmp_path / "tokens")
    assert env["TWINFER_STORE"] == str(tmp_path / "store")


@pytest.mark.processes
def test_dead_workers_series_are_removed_and_the_respawned_worker_serves(tmp_path, images):
    import re

    with ServiceProcess.start(tmp_path / "store", workers=2) as service:
        text = requests.get(service.url + "/metrics", timeout=5).text
        pids = set(re.findall(r'^twinfer_worker_model_info\{[^}]*pid="(\d+)"[^}]*\} 1\.0$', text, re.M))
        assert len(pids) == 2
        victim = sorted(pids)[0]
        os.kill(int(victim), signal.SIGKILL)
        def respawned() -> str | None:
            text = requests.get(service.url + "/metrics", timeout=5).text
            now = set(re.findall(r'^twinfer_worker_model_info\{[^}]*pid="(\d+)"[^}]*\} 1\.0$', text, re.M))
            return text if len(now) == 2 and victim not in now else None

        text = wait_until(respawned, "two live workers in the metrics, the killed one gone", 30, interval=0.2)
        assert f'pid="{victim}"' not in text
        assert re.search(r"^twinfer_workers 2\.0$", text, re.M)
        data = (images / "chelsea.png").read_bytes()
        served = {requests.post(service.url + "/detect", data=data, timeout=10).headers["X-Twinfer-Worker"] for _ in range(20)}
        assert victim not in served
