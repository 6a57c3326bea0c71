#!/usr/bin/env python3
"""twinfer side by side with peer model servers: same model, same pictures, same threads, one run.

Every server runs the same model with the same threads (ONNX Runtime intra-op 1 / inter-op 1)
and answers the same JSON detections (SSD anchors + sigmoid + NMS). The peers import
``ops/bench/peers/common``; ``--peer-pipeline`` picks their preprocessing: ``reference`` (the
default) is the reference design's (decode the whole JPEG, BGR->RGB, resize to 300x300, then
float [-1, 1]), what a user porting it writes, so twinfer's own preprocessing changes count;
``matched`` is twinfer's preprocessing ported step for step, so only the serving layer
differs. Peers run from their own
virtual environments under ``--cache`` (created on first use, reused after), never from the
project's. Each server gets ``workers = cores``; wrk (``-t1``, one Lua POST script per body
shape) loads it at each concurrency for both pictures; CPU per request is the server's whole
process tree (utime+stime, plus reaped children) over the run divided by the requests served.
A peer that fails to install, start or answer is reported with the reason and the run goes on.

Peers: reference (Flask dev server, a new InferenceSession per request: the floor),
reference-gunicorn (the same Flask app under gunicorn sync workers, one session per worker),
mlserver (Seldon MLServer 1.7, custom runtime, parallel_workers), pytriton (NVIDIA PyTriton 0.7,
bundled Triton server, 2 model instances), bentoml (BentoML 1.4, 2 workers); plus twinfer
(``python -m service`` with its default gthread workers; ``twinfer-sync``: the same under
TWINFER_WORKER_CLASS=sync, compared with the default, not counted as a peer) and the in-process ceiling (``ops/bench/serving.py``'s detect loops).

Run from the project root, first quickly to prove every peer works, then the full run:
  .venv/bin/python ops/bench/peers/run.py --duration 3
  .venv/bin/python ops/bench/peers/run.py --duration 10
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
BENCH_DIR = PEERS_DIR.parent
PROJECT_ROOT = BENCH_DIR.parents[1]
for _path in (str(BENCH_DIR), str(PROJECT_ROOT), str(PEERS_DIR)):  # serving.py, ``workers``, ``common``
    if _path not in sys.path:
        sys.path.insert(0, _path)

import serving  # noqa: E402  (ops/bench/serving.py: pictures, wrk parsing, the ceiling, twinfer's env)
from common.detector import PIPELINES  # noqa: E402  (ops/bench/peers/common)

from twinfer.engines.base import EngineOptions  # noqa: E402

SERVERS_DIR = PEERS_DIR / "servers"
MODEL_DIR = PROJECT_ROOT / "models" / "default"
ASTRONAUT = serving.SOURCE_PICTURE
DEFAULT_CACHE = Path.home() / ".cache" / "twinfer-peers"
MARKER = ".twinfer-peer.json"
INSTALL_TIMEOUT = 1800.0
READY_TIMEOUT = 180.0
SANITY_TIMEOUT = 60.0
STOP_GRACE = 20.0
START_ATTEMPTS = 2  # PyTriton's instance handshake has 1 s timeouts and can fail on a busy machine
WRK_TIMEOUT_S = 30  # per-request timeout, so slow peers' latencies are measured rather than dropped
WRK_WARM_UP_S = 2
MODEL_NAME = "detector"  # the model name on MLServer and Triton
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Same libraries in every environment, where the peer allows it (pytriton needs numpy<2).
COMMON_REQUIREMENTS = ["numpy", "opencv-python-headless", "simplejpeg", "onnxruntime==1.32.0"]


# --- peers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    name: str
    title: str
    requirements: tuple[str, ...]
    packages: tuple[str, ...]  # reported versions; the first is the server itself
    body: str  # "raw" (the JPEG as the body), "mlserver" (V2 JSON, base64 BYTES), "triton" (V2 binary)
    infer_path: str
    ready_path: str
    note: str


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "reference-gunicorn", "reference done right: Flask + gunicorn sync, session once per worker",
            ("flask", "gunicorn", *COMMON_REQUIREMENTS), ("flask", "gunicorn"),
            "raw", "/detect", "/health", "gunicorn -k sync -w WORKERS reference_flask:app",
        ),
        Peer(
            "mlserver", "Seldon MLServer, custom MLModel runtime, parallel_workers",
            ("mlserver==1.7.*", "uvloop<0.22", *COMMON_REQUIREMENTS), ("mlserver", "uvloop"),
            "mlserver", f"/v2/models/{MODEL_NAME}/infer", f"/v2/models/{MODEL_NAME}/ready",
            "mlserver start; V2 REST JSON body, JPEG as a base64 BYTES tensor; uvloop<0.22 (MLServer#2286)",
        ),
        Peer(
            "bentoml", "BentoML service, raw-bytes root input, workers",
            ("bentoml==1.4.*", *COMMON_REQUIREMENTS), ("bentoml",),
            "raw", "/detect", "/readyz", "bentoml serve; POST /detect with the raw JPEG",
        ),
        Peer(
            "pytriton", "NVIDIA PyTriton (bundled Triton server), bind() with 2 instances",
            ("nvidia-pytriton==0.7.*", "numpy<2", "opencv-python-headless<4.11", "simplejpeg", "onnxruntime==1.32.0"),
            ("nvidia-pytriton", "tritonclient"),
            "triton", f"/v2/models/{MODEL_NAME}/infer", f"/v2/models/{MODEL_NAME}/ready",
            "V2 REST binary tensor extension (raw JPEG after the JSON header); numpy<2, opencv<4.11",
        ),
        Peer(
            "reference", "reference design as written: Flask dev server, new InferenceSession per request",
            ("flask", *COMMON_REQUIREMENTS), ("flask",),
            "raw", "/detect", "/health", "app.run(threaded=False): one process, one request at a time (the floor)",
        ),
    )
}
TWINFER = "twinfer"
# twinfer itself under each gunicorn worker class it offers (TWINFER_WORKER_CLASS): the
# default first; the others are measured beside it, never counted as peers.
TWINFER_WORKER_CLASSES = {TWINFER: "gthread", "twinfer-sync": "sync"}
CEILING = "ceiling"
ALL_NAMES = [CEILING, *TWINFER_WORKER_CLASSES, *PEERS]
VERSION_PACKAGES = ("numpy", "onnxruntime", "opencv-python-headless", "simplejpeg")


class PeerFailure(Exception):
    """A peer could not be installed, started or checked; ``stage`` says which."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


def first_error_lines(text: str, count: int = 6) -> str:
    """The first lines of the error in a log: the exception of the last traceback, else the
    first ERROR line, else the tail (carets and blank lines dropped)."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip() and set(line.strip()) != {"^"}]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    if tracebacks:
        for i in range(tracebacks[-1] + 1, len(lines)):
            if not lines[i].startswith((" ", "\t")):
                return "\n".join(lines[i : i + count])
    for i, line in enumerate(lines):
        if line.startswith(("ERROR", "error:")):
            return "\n".join(lines[i : i + count])
    return "\n".join(lines[-count:])


# --- virtual environments ------------------------------------------------------------


@dataclass
class Environment:
    path: Path
    python: Path
    install_s: float | None  # seconds the install took (when it was made), None if unknown
    installed_now: bool
    size_mb: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)


def base_python() -> str:
    """The interpreter this venv was made from (a pyenv Python here), not the project venv's."""
    candidate = getattr(sys, "_base_executable", None)
    if candidate and Path(candidate).exists() and Path(candidate).resolve() != Path(sys.executable).resolve():
        return candidate
    for name in (f"python{sys.version_info.major}.{sys.version_info.minor}", "python3"):
        path = Path(sys.base_prefix) / "bin" / name
        if path.exists():
            return str(path)
    return sys.executable


def directory_size_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 1e6


def ensure_environment(peer: Peer, cache: Path, log_dir: Path) -> Environment:
    """``<cache>/<peer>``: reused when its marker names the same requirements, else (re)installed."""
    venv = cache / peer.name
    python = venv / "bin" / "python"
    marker = venv / MARKER
    wanted = list(peer.requirements)
    if python.exists() and marker.exists():
        try:
            recorded = json.loads(marker.read_text())
        except json.JSONDecodeError:
            recorded = {}
        if recorded.get("requirements") == wanted:
            return Environment(venv, python, recorded.get("install_s"), installed_now=False)
    log_path = log_dir / f"{peer.name}-install.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        if not python.exists():
            made = subprocess.run(
                [base_python(), "-m", "venv", str(venv)], stdout=log, stderr=subprocess.STDOUT, timeout=300
            )
            if made.returncode != 0:
                raise PeerFailure("install", first_error_lines(log_path.read_text(errors="replace")))
        try:
            done = subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", *wanted],
                stdout=log, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise PeerFailure("install", f"pip install did not finish in {INSTALL_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        lines = log_path.read_text(errors="replace").splitlines()
        text = "\n".join(line for line in lines if not line.startswith("WARNING: Location"))
        raise PeerFailure("install", first_error_lines(text))
    install_s = time.monotonic() - started
    marker.write_text(json.dumps({"requirements": wanted, "install_s": round(install_s, 1), "at": time.ctime()}))
    return Environment(venv, python, install_s, installed_now=True)


def package_versions(python: Path, packages: tuple[str, ...]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = '-'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def interpreter_libdir(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
        capture_output=True, text=True, timeout=60,
    )
    return done.stdout.strip()


# --- processes -----------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # fields from ``state`` on (comm may hold spaces)


def process_tree(root: int) -> dict[int, float]:
    """pid -> CPU seconds (utime+stime+cutime+cstime) for ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        ticks[pid] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    tree: dict[int, float] = {}
    pending = [root]
    while pending:  # bounded by the number of processes listed above
        pid = pending.pop()
        if pid in tree or pid not in ticks:
            continue
        tree[pid] = ticks[pid] / CLOCK_TICKS
        pending.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    return sum(process_tree(root).values())


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _wait_gone(proc: subprocess.Popen, pids: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        proc.poll()  # reap the leader so it does not linger as a zombie
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


def stop_server(proc: subprocess.Popen) -> float:
    """Stop the server and its whole tree; returns the seconds it took.

    SIGTERM to the leader first (each server's own graceful stop: gunicorn's arbiter, MLServer,
    BentoML's arbiter and PyTriton's Triton context all shut their children down in order), then
    SIGTERM and finally SIGKILL to whatever of its tree (listed before the stop, and the leader's
    process group) is left."""
    started = time.monotonic()
    if proc.poll() is not None:
        return 0.0
    members = set(process_tree(proc.pid))
    proc.send_signal(signal.SIGTERM)
    if not _wait_gone(proc, members, STOP_GRACE):
        members |= set(process_tree(proc.pid))
        _signal_all(members, signal.SIGTERM)
        if not _wait_gone(proc, members, 5.0):
            _signal_all(members, signal.SIGKILL)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers that left the tree but kept the group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return time.monotonic() - started


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def wait_http_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerFailure(
                "start", f"exited with {proc.returncode}:\n" + first_error_lines(log_path.read_text(errors="replace"))
            )
        if http_status(url) == 200:
            return
        time.sleep(0.3)
    log = log_path.read_text(errors="replace")
    raise PeerFailure("start", f"not ready in {timeout:.0f}s:\n" + first_error_lines(log))


# --- request bodies ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: dict[str, str]


def make_request(kind: str, picture: bytes, content_type: str) -> Request:
    """The body a real client sends to that server for one picture."""
    if kind == "raw":
        return Request(picture, {"Content-Type": content_type})
    if kind == "mlserver":  # what mlserver.codecs.Base64Codec.encode_input("image", [jpeg]) sends
        document = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(picture).decode("ascii")],
                }
            ]
        }
        return Request(json.dumps(document).encode(), {"Content-Type": "application/json"})
    if kind == "triton":  # tritonclient.http with binary_data=True: BYTES elements are length-prefixed
        element = struct.pack("<I", len(picture)) + picture
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(element)},
                    }
                ],
                "outputs": [{"name": "detections", "parameters": {"binary_data": False}}],
            }
        ).encode()
        return Request(
            header + element,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        )
    raise ValueError(kind)


def detections_from(kind: str, response: bytes) -> list[dict]:
    document = json.loads(response)
    if kind in ("mlserver", "triton"):
        document = json.loads(document["outputs"][0]["data"][0])
    return document["detections"]


def post(url: str, request: Request, timeout: float = 60) -> bytes:
    req = urllib.request.Request(url, data=request.body, headers=request.headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.read()


def sanity_check(url: str, kind: str) -> str:
    """astronaut.png through the peer's own request shape must come back with a Person."""
    request = make_request(kind, ASTRONAUT.read_bytes(), "image/png")
    deadline = time.monotonic() + SANITY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            detections = detections_from(kind, post(url, request))
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError, KeyError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            labels = [d["label"] for d in detections]
            if "Person" not in labels:
                raise PeerFailure("sanity", f"astronaut.png gave {labels or 'no detections'}, expected a Person")
            top = max(detections, key=lambda d: d["score"])
            return f"{top['label']} {top['score']:.5f}"
        time.sleep(0.5)
    raise PeerFailure("sanity", f"astronaut.png request failed: {last}")


def lua_script(directory: Path, name: str, request: Request) -> Path:
    """serving.wrk_script's shape: the body is read once from a file, plus this body's headers."""
    body_path = directory / f"{name}.body"
    body_path.write_bytes(request.body)
    script = directory / f"{name}.lua"
    lines = [
        f'local f = assert(io.open([==[{body_path}]==], "rb"))',
        'wrk.body = f:read("*a")',
        "f:close()",
        'wrk.method = "POST"',
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in request.headers.items()]
    script.write_text("\n".join(lines) + "\n")
    return script


# Appended to every script: which worker answered, from the header a server names its
# worker process in (twinfer's X-Twinfer-Worker, which Falcon sends in lower case;
# X-Worker from the Flask peer), printed
# by wrk at the end as "worker <pid> <answers>".
WORKER_COUNTS_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  for name, worker in pairs(headers) do
    local lower = string.lower(name)
    if lower == "x-twinfer-worker" or lower == "x-worker" then counts[worker] = (counts[worker] or 0) + 1 end
  end
end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for worker, n in pairs(thread:get("counts")) do io.write("worker ", worker, " ", n, "\\n") end
  end
end
"""


def with_worker_counts(script: Path) -> Path:
    script.write_text(script.read_text() + WORKER_COUNTS_LUA)
    return script


def scripts_for(kind: str, workdir: Path, pictures: dict[str, Path]) -> dict[str, Path]:
    if kind == "raw":  # the Lua script ops/bench/serving.py uses for twinfer, plus the counts
        return {name: with_worker_counts(serving.wrk_script(workdir, path)) for name, path in pictures.items()}
    return {
        name: with_worker_counts(lua_script(workdir, f"{kind}-{name}", make_request(kind, path.read_bytes(), "image/jpeg")))
        for name, path in pictures.items()
    }


def worker_answers(wrk_output: str) -> dict[str, int]:
    """The "worker <pid> <answers>" lines of WORKER_COUNTS_LUA."""
    found = re.findall(r"^worker (\S+) (\d+)$", wrk_output, flags=re.MULTILINE)
    return {worker: int(n) for worker, n in found}


def spread_text(answers: dict[str, int]) -> str:
    """Each worker's share of the answers, busiest first ("52/48"); "-" when the server
    does not say which worker answered."""
    total = sum(answers.values())
    if not total:
        return "-"
    return "/".join(f"{100 * n / total:.0f}" for n in sorted(answers.values(), reverse=True))


# --- measuring -----------------------------------------------------------------------


@dataclass
class Row:
    image: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float | None
    requests: int
    errors: int
    workers: dict[str, int] = field(default_factory=dict)  # answers per worker process


def run_wrk(url: str, script: Path, concurrency: int, duration: int) -> tuple[serving.WrkResult, dict[str, int]]:
    command = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", f"{WRK_TIMEOUT_S}s",
        "--latency", "-s", str(script), url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + WRK_TIMEOUT_S + 60, check=True)
    return serving.parse_wrk(done.stdout), worker_answers(done.stdout)


def measure(
    root_pid: int, url: str, scripts: dict[str, Path], concurrencies: list[int], workers: int, duration: int
) -> list[Row]:
    rows = []
    for image, script in scripts.items():
        run_wrk(url, script, workers, WRK_WARM_UP_S)
        for c in concurrencies:
            cpu_before = tree_cpu_seconds(root_pid)
            result, answers = run_wrk(url, script, c, duration)
            cpu = tree_cpu_seconds(root_pid) - cpu_before
            rows.append(
                Row(
                    image=image,
                    concurrency=c,
                    rps=result.rps,
                    p50_ms=result.p50_ms,
                    p99_ms=result.p99_ms,
                    cpu_ms_per_request=cpu * 1e3 / result.requests if result.requests else None,
                    requests=result.requests,
                    errors=result.non_2xx + result.socket_errors,
                    workers=answers,
                )
            )
            print(
                f"    {image:<10} c={c:<3} {result.rps:8.1f} rps  p50 {result.p50_ms:8.1f} ms  "
                f"p99 {result.p99_ms:8.1f} ms  {rows[-1].cpu_ms_per_request or 0:7.1f} CPU ms/req  "
                f"spread {spread_text(answers)}",
                flush=True,
            )
    return rows


@dataclass
class Outcome:
    name: str
    title: str
    version: str
    status: str  # "ok", "install failed", "start failed", "sanity failed", "failed"
    reason: str = ""
    sanity: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    size_mb: float | None = None
    install_s: float | None = None
    installed_now: bool = False
    notes: list[str] = field(default_factory=list)
    loads: list[tuple[float, float]] = field(default_factory=list)  # 1-min load average before/after, per round
    rows: list[Row] = field(default_factory=list)


def peer_env(extra: dict[str, str], venv: Path | None = None) -> dict[str, str]:
    """The caller's environment without twinfer's or another venv's settings, plus the peer's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TWINFER_", "PEER_"))
        and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR")
    }
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(PYTHONPATH=str(PEERS_DIR), PYTHONNOUSERSITE="1", PEER_MODEL_DIR=str(MODEL_DIR))
    env.update(PEER_INTRA_OP_THREADS="1", PEER_INTER_OP_THREADS="1")
    env.update(extra)
    return env


def launch(
    peer: Peer, venv: Path, workdir: Path, workers: int, pipeline: str, log_path: Path
) -> tuple[subprocess.Popen, str]:
    """Start the peer on 127.0.0.1; returns the process (a session leader) and its base URL."""
    port = serving.free_port()
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    env = {"PEER_PORT": str(port), "PEER_WORKERS": str(workers), "PEER_PIPELINE": pipeline}
    cwd = SERVERS_DIR
    if peer.name == "reference":
        env["PEER_SESSION_PER_REQUEST"] = "1"
        argv = [str(python), str(SERVERS_DIR / "reference_flask.py")]
    elif peer.name == "reference-gunicorn":
        argv = [
            str(bin_dir / "gunicorn"), "--workers", str(workers), "--worker-class", "sync",
            "--bind", f"127.0.0.1:{port}", "--chdir", str(SERVERS_DIR), "reference_flask:app",
        ]
    elif peer.name == "mlserver":
        repo = workdir / "mlserver-repo"
        (repo / MODEL_NAME).mkdir(parents=True, exist_ok=True)
        settings = {
            "host": "127.0.0.1",
            "http_port": port,
            "grpc_port": serving.free_port(),
            "metrics_port": serving.free_port(),
            "parallel_workers": workers,
            "debug": False,  # the default (true) logs every request and at DEBUG level
            "metrics_dir": str(workdir / "mlserver-metrics"),
            "environments_dir": str(workdir / "mlserver-envs"),
        }
        (repo / "settings.json").write_text(json.dumps(settings))
        model_settings = {"name": MODEL_NAME, "implementation": "servers.mlserver_runtime.DetectorRuntime"}
        (repo / MODEL_NAME / "model-settings.json").write_text(json.dumps(model_settings))
        argv, cwd = [str(bin_dir / "mlserver"), "start", str(repo)], repo
    elif peer.name == "pytriton":
        libdir = interpreter_libdir(python)  # the stub must load this interpreter's libpython
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)
        env["PEER_WORKSPACE"] = str(workdir / f"pytriton-workspace-{port}")  # fresh per start
        argv = [
            str(python), str(SERVERS_DIR / "pytriton_server.py"),
            str(port), str(serving.free_port()), str(serving.free_port()), str(workers),
        ]
    elif peer.name == "bentoml":
        env.update(BENTOML_HOME=str(workdir / "bentoml-home"), BENTOML_DO_NOT_TRACK="true")
        argv = [
            str(bin_dir / "bentoml"), "serve", "servers.bentoml_service:PeerDetector",
            "--host", "127.0.0.1", "--port", str(port),
        ]
        cwd = PEERS_DIR
    else:
        raise ValueError(peer.name)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=peer_env(env, venv), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return proc, f"http://127.0.0.1:{port}"


def run_peer(
    peer: Peer, cache: Path, log_dir: Path, workdir: Path, pictures: dict[str, Path], args: argparse.Namespace
) -> Outcome:
    outcome = Outcome(peer.name, peer.title, "?", "failed")
    print(f"\n[{peer.name}] {peer.title}", flush=True)
    try:
        started = time.monotonic()
        environment = ensure_environment(peer, cache, log_dir)
        outcome.install_s, outcome.installed_now = environment.install_s, environment.installed_now
        outcome.size_mb = directory_size_mb(environment.path)
        outcome.versions = package_versions(environment.python, peer.packages + VERSION_PACKAGES)
        outcome.version = outcome.versions.get(peer.packages[0], "?")
        how = f"installed in {time.monotonic() - started:.0f}s" if environment.installed_now else "reused"
        print(f"  environment {environment.path} ({how}, {outcome.size_mb:.0f} MB): {outcome.versions}", flush=True)
    except PeerFailure as exc:
        outcome.status, outcome.reason = f"{exc.stage} failed", exc.reason
        print(f"  {outcome.status}: " + exc.reason.replace("\n", "\n    "), flush=True)
        return outcome
    except Exception as exc:  # noqa: BLE001 - one peer's surprise must not end the run
        outcome.status, outcome.reason = "install failed", f"{type(exc).__name__}: {exc}"
        print(f"  {outcome.status}: " + outcome.reason.replace("\n", "\n    "), flush=True)
        return outcome
    log_path = log_dir / f"{peer.name}-server.log"
    proc = None
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            proc, url = launch(peer, environment.path, workdir, args.workers, args.peer_pipeline, log_path)
            try:
                wait_http_ready(proc, url + peer.ready_path, log_path)
                break
            except PeerFailure as exc:
                stop_server(proc)
                proc = None
                if attempt == START_ATTEMPTS:
                    raise
                lines = exc.reason.splitlines() or [""]
                first_line = next((line for line in reversed(lines) if "Error:" in line), lines[0]).strip()
                outcome.notes.append(f"start attempt {attempt} failed: {first_line}")
                reason = exc.reason.replace("\n", "\n    ")
                print(f"  start attempt {attempt} failed, retrying:\n    {reason}", flush=True)
        outcome.sanity = sanity_check(url + peer.infer_path, peer.body)
        print(f"  ready at {url} (pid {proc.pid}); astronaut.png -> {outcome.sanity}", flush=True)
        scripts = scripts_for(peer.body, workdir, pictures)
        load_before = os.getloadavg()[0]
        outcome.rows = measure(proc.pid, url + peer.infer_path, scripts, args.concurrency, args.workers, args.duration)
        outcome.loads = [(load_before, os.getloadavg()[0])]
        outcome.status = "ok"
    except PeerFailure as exc:
        outcome.status, outcome.reason = f"{exc.stage} failed", exc.reason
        print(f"  {outcome.status}: " + exc.reason.replace("\n", "\n    "), flush=True)
    except Exception as exc:  # noqa: BLE001
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        outcome.status = "failed"
        outcome.reason = f"{type(exc).__name__}: {exc}".strip()[:500] + ("\n" + first_error_lines(text) if text else "")
        print(f"  failed: {outcome.reason}", flush=True)
    finally:
        if proc is not None:
            print(f"  stopped in {stop_server(proc):.1f}s", flush=True)
            if peer.name == "pytriton":
                remove_pytriton_shm(proc.pid)
    return outcome


def remove_pytriton_shm(pid: int) -> None:
    """PyTriton names its shared-memory blocks ``/dev/shm/pytrtion<pid>-*`` after the proxy
    process; blocks of this run's server left by a hard stop are removed."""
    for path in Path("/dev/shm").glob(f"pytrtion{pid}-*"):
        try:
            path.unlink()
        except OSError:
            pass


def run_twinfer(
    name: str, workdir: Path, log_dir: Path, pictures: dict[str, Path], args: argparse.Namespace
) -> Outcome:
    """``python -m service`` exactly as serving.py starts it (workers = cores, intra-op 1),
    with the worker class ``name`` stands for."""
    worker_class = TWINFER_WORKER_CLASSES[name]
    title = f"twinfer: python -m service (gunicorn {worker_class} + Falcon)"
    outcome = Outcome(name, title, project_version(), "failed")
    print(f"\n[{name}] {outcome.title}", flush=True)
    port = serving.free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"{name}-server.log"
    env = serving.service_env(workdir / f"{name}-store", port, args.workers, 1, MODEL_DIR)
    env["TWINFER_WORKER_CLASS"] = worker_class
    proc = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        serving.wait_ready(proc, url, args.workers, log_path)
        outcome.sanity = sanity_check(url + "/detect", "raw")
        print(f"  ready at {url} (pid {proc.pid}); astronaut.png -> {outcome.sanity}", flush=True)
        scripts = scripts_for("raw", workdir, pictures)
        load_before = os.getloadavg()[0]
        outcome.rows = measure(proc.pid, url + "/detect", scripts, args.concurrency, args.workers, args.duration)
        outcome.loads = [(load_before, os.getloadavg()[0])]
        outcome.status = "ok"
    except PeerFailure as exc:
        outcome.status, outcome.reason = f"{exc.stage} failed", exc.reason
    except Exception as exc:  # noqa: BLE001
        outcome.status, outcome.reason = "failed", first_error_lines(f"{type(exc).__name__}: {exc}", 8)
    finally:
        if proc is not None:
            print(f"  stopped in {stop_server(proc):.1f}s", flush=True)
    if outcome.status != "ok":
        print(f"  {outcome.status}: " + outcome.reason.replace("\n", "\n    "), flush=True)
    return outcome


def project_version() -> str:
    try:
        import tomllib

        return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ValueError):
        return "?"


def run_ceiling(pictures: dict[str, Path], args: argparse.Namespace) -> dict[str, serving.InProcess] | str:
    print(f"\n[{CEILING}] in-process VisionModel.detect loops (1 process, then {args.workers})", flush=True)
    options = EngineOptions(intra_op_threads=1, inter_op_threads=1)
    try:
        result = {
            name: serving.measure_in_process(MODEL_DIR, options, path, args.workers, args.duration)
            for name, path in pictures.items()
        }
    except Exception as exc:  # noqa: BLE001
        return first_error_lines(f"{type(exc).__name__}: {exc}")
    for name, r in result.items():
        print(f"    {name:<10} c=1 {r.c1_rps:8.1f} rps  p50 {r.c1_p50_ms:8.1f} ms; {args.workers} processes "
              f"{r.saturation_rps:8.1f} rps", flush=True)
    return result


# --- rounds --------------------------------------------------------------------------


def median_outcome(runs: list[Outcome]) -> Outcome:
    """One server over the rounds: per picture and concurrency the median rps, p50, p99
    and CPU per request (each on its own), errors summed, the spread of the median-rps run.
    A server that failed in any round is reported as that failure."""
    failed = next((o for o in runs if o.status != "ok"), None)
    if failed is not None:
        return failed
    merged = Outcome(**{**asdict(runs[0]), "rows": [], "loads": [load for o in runs for load in o.loads]})
    merged.notes = [note for o in runs for note in o.notes]
    for key in [(r.image, r.concurrency) for r in runs[0].rows]:
        rows = [r for o in runs for r in o.rows if (r.image, r.concurrency) == key]
        by_rps = sorted(rows, key=lambda r: r.rps)
        cpus = [r.cpu_ms_per_request for r in rows if r.cpu_ms_per_request is not None]
        merged.rows.append(
            Row(
                image=key[0],
                concurrency=key[1],
                rps=statistics.median(r.rps for r in rows),
                p50_ms=statistics.median(r.p50_ms for r in rows),
                p99_ms=statistics.median(r.p99_ms for r in rows),
                cpu_ms_per_request=statistics.median(cpus) if cpus else None,
                requests=sum(r.requests for r in rows),
                errors=sum(r.errors for r in rows),
                workers=by_rps[len(by_rps) // 2].workers,
            )
        )
    return merged


def median_ceiling(runs: list[dict[str, serving.InProcess]]) -> dict[str, serving.InProcess]:
    return {
        image: serving.InProcess(
            **{
                name: statistics.median(getattr(run[image], name) for run in runs)
                for name in asdict(runs[0][image])
                if name != "saturation_processes"
            },
            saturation_processes=runs[0][image].saturation_processes,
        )
        for image in runs[0]
    }


# --- report --------------------------------------------------------------------------


def best_row(rows: list[Row], image: str) -> Row | None:
    candidates = [r for r in rows if r.image == image and r.requests > 0]
    return max(candidates, key=lambda r: r.rps) if candidates else None


def print_report(
    setup: dict, outcomes: list[Outcome], ceiling: dict[str, serving.InProcess] | str | None, images: list[str]
) -> dict:
    print("\n" + "=" * 100)
    print(
        f"setup: cores={setup['cores']} workers={setup['workers']} ORT intra-op=1 inter-op=1 "
        f"model={setup['model']} duration={setup['duration_s']}s concurrency={setup['concurrency']} "
        f"wrk -t1 --timeout {WRK_TIMEOUT_S}s peer-pipeline={setup['peer_pipeline']}"
    )
    print("\nenvironments, and the machine's 1-min load average before -> after each server's runs (the")
    print(f"  benchmark alone keeps it near {setup['workers'] + 1}; well above that, other work shared the cores):")
    for o in outcomes:
        load = "load " + ", ".join(f"{before:.1f} -> {after:.1f}" for before, after in o.loads) if o.loads else ""
        if o.name in TWINFER_WORKER_CLASSES:
            print(f"  {o.name:<19} project .venv (twinfer {o.version})  {load}")
            continue
        size = f"{o.size_mb:.0f} MB" if o.size_mb is not None else "-"
        install = f"{o.install_s:.0f}s" if o.install_s is not None else "?"
        install += " (this run)" if o.installed_now else " (cached)"
        versions = " ".join(f"{k}={v}" for k, v in o.versions.items())
        print(f"  {o.name:<19} {size:>8}  install {install:<16} {load}  {versions}")
    header = (
        f"{'peer':<19} {'version':<9} {'image':<10} {'c':>3} {'rps':>8} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'cpu-ms/req':>10} {'errors':>6}  spread"
    )
    print("\n" + header)
    print("-" * len(header))
    for o in outcomes:
        if o.status != "ok":
            continue
        for r in o.rows:
            cpu = f"{r.cpu_ms_per_request:.1f}" if r.cpu_ms_per_request is not None else "-"
            print(
                f"{o.name:<19} {o.version:<9} {r.image:<10} {r.concurrency:>3} {r.rps:>8.1f} {r.p50_ms:>9.1f} "
                f"{r.p99_ms:>9.1f} {cpu:>10} {r.errors:>6}  {spread_text(r.workers)}"
            )
    if isinstance(ceiling, dict):
        for image, c in ceiling.items():
            print(
                f"{'ceiling (in-proc)':<19} {'-':<9} {image:<10} {1:>3} {c.c1_rps:>8.1f} {c.c1_p50_ms:>9.1f} "
                f"{c.c1_p99_ms:>9.1f} {c.c1_cpu_ms_per_request:>10.1f} {0:>6}"
            )
            print(
                f"{'ceiling (in-proc)':<19} {'-':<9} {image:<10} {'p' + str(c.saturation_processes):>3} "
                f"{c.saturation_rps:>8.1f} {'-':>9} {'-':>9} {'-':>10} {0:>6}"
            )
        print("  (ceiling 'pN' = N processes looping detect at once: the throughput ceiling)")
    print("  (spread: each worker's share of the answers in %, busiest first; '-': the server does not say)")

    summary: dict = {}
    twinfer = next((o for o in outcomes if o.name == TWINFER and o.status == "ok"), None)
    variants = [o for o in outcomes if o.name in TWINFER_WORKER_CLASSES and o.name != TWINFER and o.status == "ok"]
    peers_ok = [o for o in outcomes if o.name not in TWINFER_WORKER_CLASSES and o.status == "ok"]
    print("\nratios (rps at each server's best concurrency):")
    for image in images:
        line: dict = {}
        t_best = best_row(twinfer.rows, image) if twinfer else None
        bests = [(o, best_row(o.rows, image)) for o in peers_ok]
        bests = [(o, r) for o, r in bests if r is not None]
        if t_best and bests:
            top_peer, top_row = max(bests, key=lambda pr: pr[1].rps)
            ratio = t_best.rps / top_row.rps
            line["twinfer_over_best_peer"] = {
                "ratio": ratio, "peer": top_peer.name, "peer_rps": top_row.rps, "peer_c": top_row.concurrency,
                "twinfer_rps": t_best.rps, "twinfer_c": t_best.concurrency,
            }
            print(
                f"  {image}: twinfer / best peer = {t_best.rps:.1f} (c={t_best.concurrency}) / {top_row.rps:.1f} "
                f"({top_peer.name}, c={top_row.concurrency}) = {ratio:.2f}"
            )
            for o, r in sorted(bests, key=lambda pr: -pr[1].rps):
                per = t_best.rps / r.rps
                line.setdefault("twinfer_over_peer", {})[o.name] = per
                print(f"      twinfer / {o.name:<19} = {t_best.rps:.1f} / {r.rps:.1f} (c={r.concurrency}) = {per:.2f}")
        if t_best and isinstance(ceiling, dict) and image in ceiling:
            sat = ceiling[image].saturation_rps
            line["twinfer_over_ceiling"] = t_best.rps / sat
            print(
                f"  {image}: twinfer / in-process ceiling = {t_best.rps:.1f} / {sat:.1f} "
                f"({ceiling[image].saturation_processes} processes) = {t_best.rps / sat:.2f}"
            )
        summary[image] = line
    if twinfer and peers_ok:
        print("\nratios at each concurrency (twinfer / the best peer at that concurrency; p99 and CPU per request beside):")
        for image in images:
            for t_row in (r for r in twinfer.rows if r.image == image):
                same = [(o, r) for o in peers_ok for r in o.rows if r.image == image and r.concurrency == t_row.concurrency]
                if not same or not t_row.requests:
                    continue
                peer, p_row = max(same, key=lambda pr: pr[1].rps)
                cpu = (
                    f"cpu {t_row.cpu_ms_per_request:.1f} vs {p_row.cpu_ms_per_request:.1f} ms"
                    if t_row.cpu_ms_per_request and p_row.cpu_ms_per_request else ""
                )
                print(
                    f"  {image:<10} c={t_row.concurrency:<3} {t_row.rps / p_row.rps:5.2f} ({peer.name})  "
                    f"p99 {t_row.p99_ms:.1f} vs {p_row.p99_ms:.1f} ms  {cpu}"
                )
                summary.setdefault(image, {}).setdefault("twinfer_over_best_peer_at", {})[t_row.concurrency] = (
                    t_row.rps / p_row.rps
                )
    if twinfer and variants:
        print("\nother worker classes (rps / twinfer's default at the same concurrency; p99 beside):")
        for variant in variants:
            for v_row in variant.rows:
                same = next((r for r in twinfer.rows if (r.image, r.concurrency) == (v_row.image, v_row.concurrency)), None)
                if same is None or not same.rps:
                    continue
                print(
                    f"  {variant.name:<13} {v_row.image:<10} c={v_row.concurrency:<3} {v_row.rps / same.rps:5.2f}  "
                    f"p99 {v_row.p99_ms:.1f} vs {same.p99_ms:.1f} ms"
                )
                summary.setdefault(v_row.image, {}).setdefault(f"{variant.name}_over_twinfer_at", {})[
                    v_row.concurrency
                ] = v_row.rps / same.rps
    notes = [(o.name, note) for o in outcomes for note in o.notes]
    if notes:
        print("\nnotes:")
        for name, note in notes:
            print(f"  {name}: {note}")
    failed = [o for o in outcomes if o.status != "ok"]
    if isinstance(ceiling, str):
        print(f"\nceiling failed: {ceiling}")
    if failed:
        print("\nnot measured:")
        for o in failed:
            reason = o.reason.replace("\n", "\n      ")
            print(f"  {o.name}: {o.status}\n      {reason}")
    return {
        "setup": setup,
        "outcomes": [asdict(o) for o in outcomes],
        "ceiling": {k: asdict(v) for k, v in ceiling.items()} if isinstance(ceiling, dict) else ceiling,
        "summary": summary,
    }


# --- command line --------------------------------------------------------------------


def peer_list(raw: str) -> list[str]:
    names = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = [n for n in names if n not in ALL_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown peers {unknown}; choose from {','.join(ALL_NAMES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--peers", type=peer_list, default=ALL_NAMES,
        help=f"comma-separated subset, in run order (default: {','.join(ALL_NAMES)})",
    )
    parser.add_argument(
        "--duration", type=serving.positive_int, default=10, help="seconds per measurement (default 10)"
    )
    parser.add_argument(
        "--concurrency", type=serving.concurrency_list, default=[1, 4, 8],
        help="wrk connections, comma-separated (default 1,4,8)",
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE,
        help=f"where the peers' virtual environments live (default {DEFAULT_CACHE}/<peer>; reused when present)",
    )
    parser.add_argument(
        "--workers", type=serving.positive_int, default=os.cpu_count() or 1,
        help="server workers / instances = in-process saturation processes (default: cores)",
    )
    parser.add_argument(
        "--peer-pipeline", choices=PIPELINES, default="reference",
        help="the peers' preprocessing: the reference design's (default) or twinfer's own (matched)",
    )
    parser.add_argument(
        "--rounds", type=serving.positive_int, default=1,
        help="run every server this many times, interleaved (peer, twinfer, peer, ...), and report medians",
    )
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this path")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (make test installs it)", file=sys.stderr)
        return 2
    cache = args.cache.expanduser().resolve()
    log_dir = cache / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    setup = {
        "cores": os.cpu_count(),
        "workers": args.workers,
        "model": str(MODEL_DIR.relative_to(PROJECT_ROOT) / "model.onnx"),
        "duration_s": args.duration,
        "concurrency": ",".join(map(str, args.concurrency)),
        "peers": args.peers,
        "peer_pipeline": args.peer_pipeline,
        "rounds": args.rounds,
        "logs": str(log_dir),
    }
    print(f"logs in {log_dir}", flush=True)
    ceiling: dict[str, serving.InProcess] | str | None = None
    rounds: list[list[Outcome]] = []
    ceilings: list[dict[str, serving.InProcess]] = []
    with tempfile.TemporaryDirectory(prefix="twinfer-peers-") as tmp:
        workdir = Path(tmp)
        pictures = serving.make_pictures(workdir)
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"\n===== round {number} of {args.rounds}", flush=True)
            outcomes = []
            for name in args.peers:
                if name == CEILING:
                    ceiling = run_ceiling(pictures, args)
                    if isinstance(ceiling, dict):
                        ceilings.append(ceiling)
                elif name in TWINFER_WORKER_CLASSES:
                    outcomes.append(run_twinfer(name, workdir, log_dir, pictures, args))
                else:
                    outcomes.append(run_peer(PEERS[name], cache, log_dir, workdir, pictures, args))
            rounds.append(outcomes)
        if args.rounds > 1:
            print(f"\n{'=' * 100}\nmedians of {args.rounds} interleaved rounds", flush=True)
            outcomes = [median_outcome([r[i] for r in rounds]) for i in range(len(rounds[0]))]
            if ceilings:
                ceiling = median_ceiling(ceilings)
        figures = print_report(setup, outcomes, ceiling, list(pictures))
        figures["rounds"] = [[asdict(o) for o in r] for r in rounds]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
