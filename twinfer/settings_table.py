"""Every setting of the service, declared once: its variable, type, default and meaning.

The supervisor's settings (``service.settings``), the workers' (``workers.settings``),
gunicorn's (``workers.gunicorn_config``) and the twin factory read their variables through
``read``, so a default or a lower bound exists only here; the README's configuration
table is generated from ``SETTINGS`` (``python -m twinfer.settings_table --readme``) and
``tests/twinfer/test_settings_table.py`` fails when the two differ.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

README_BEGIN = "<!-- settings table: generated from twinfer/settings_table.py (python -m twinfer.settings_table --readme) -->"
README_END = "<!-- end of settings table -->"

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # holds ``twinfer``, ``service`` and ``workers``
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One environment variable. ``default`` may be a function of the environment (shown
    as ``shown_default``); None means unset. ``minimum`` bounds numbers; ``choices``
    bounds text."""

    name: str
    kind: str  # "int", "seconds", "bool", "text", "path", "choice", "secret"
    default: Any
    doc: str
    shown_default: str | None = None
    minimum: float | None = None
    choices: tuple[str, ...] = ()

    def default_in(self, environ: Mapping[str, str]) -> Any:
        return self.default(environ) if callable(self.default) else self.default

    def read(self, environ: Mapping[str, str] = os.environ) -> Any:
        """The value from ``environ`` (blank = unset), or ValueError naming the variable."""
        raw = environ.get(self.name, "").strip()
        if not raw:
            return self.default_in(environ)
        if self.kind == "int":
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{self.name} must be an integer, got {raw!r}") from None
            return self._bounded(value)
        if self.kind == "seconds":
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{self.name} must be a number of seconds, got {raw!r}") from None
            return self._bounded(value)
        if self.kind == "bool":
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError(f"{self.name} must be true or false, got {raw!r}")
        if self.kind == "choice" and raw not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {raw!r}")
        if self.kind == "path":
            return Path(raw).expanduser().resolve()
        return raw

    def _bounded(self, value: float) -> Any:
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{self.name} must be >= {self._number(self.minimum)}, got {self._number(value)}")
        return value

    @staticmethod
    def _number(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else str(value)

    def readme_default(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return f"`{str(self.default).lower()}`"
        if isinstance(self.default, float):
            return f"`{self._number(self.default)}`"
        return f"`{self.default}`"


def _cpu_count(environ: Mapping[str, str]) -> int:
    return os.cpu_count() or 1


def _intra_op_default(environ: Mapping[str, str]) -> int:
    """Cores shared by the pool: every worker may infer at once without oversubscribing."""
    from twinfer.engines.base import EngineOptions

    return EngineOptions.for_pool(read("TWINFER_WORKERS", environ)).intra_op_threads


def _bundled_model_dir(environ: Mapping[str, str]) -> Path:
    """The demo model of a checkout (``models/default`` beside the packages)."""
    return PACKAGE_ROOT / "models" / "default"


SETTINGS: tuple[Setting, ...] = (
    # --- the store and the pool
    Setting("TWINFER_STORE", "path", lambda env: Path("var").resolve(),
            "model store (the IoT Edge bind mount, `/iotedge/storage` in the container)",
            shown_default="`./var` (in the working directory)"),
    Setting("TWINFER_HTTP_HOST", "text", "0.0.0.0", "listen address"),
    Setting("TWINFER_HTTP_PORT", "int", 8080, "listen port", minimum=1),
    Setting("TWINFER_WORKERS", "int", _cpu_count, "gunicorn worker processes", shown_default="CPU count", minimum=1),
    Setting("TWINFER_INTRA_OP_THREADS", "int", _intra_op_default,
            "ONNX Runtime intra-op / LiteRT threads per worker", shown_default="cores // workers (min 1)", minimum=1),
    Setting("TWINFER_INTER_OP_THREADS", "int", 1, "ONNX Runtime inter-op threads", minimum=1),
    Setting("TWINFER_WORKER_CLASS", "choice", "gthread",
            "gunicorn worker class: `gthread` (a slow client holds one thread, not the worker) or `sync` (one "
            "request per process; see \"Security\")", choices=("gthread", "sync")),
    Setting("TWINFER_THREADS", "int", 6,
            "threads per `gthread` worker: connections read and answered at once; of them, cores / (workers x "
            "intra-op threads) (min 1) infer at once (\"Inference slots and client sharing\")", minimum=1),
    Setting("TWINFER_KEEPALIVE_LINGER", "seconds", 0.005,
            "seconds a `gthread` thread waits for the next request on a kept-alive connection before handing it "
            "back to gunicorn's poller; back-to-back requests then skip ~9 thread handovers each (1.2-1.5 ms CPU "
            "at 640x480, \"Performance\"); `0` = gunicorn's own behaviour", minimum=0),
    Setting("TWINFER_WORKER_TIMEOUT", "int", 30, "gunicorn worker timeout (s)", minimum=1),
    Setting("TWINFER_LOG_LEVEL", "choice", "info", "gunicorn log level",
            choices=("debug", "info", "warning", "error", "critical")),
    Setting("TWINFER_ACCESS_LOG", "text", None, "gunicorn access log target (`-` for stdout)"),
    # --- requests
    Setting("TWINFER_MAX_BODY_BYTES", "int", 20 * 1024 * 1024,
            "larger bodies get 413, decided from Content-Length before reading", shown_default="`20971520` (20 MiB)",
            minimum=1),
    Setting("TWINFER_MAX_IMAGE_PIXELS", "int", 50_000_000, "images declaring more pixels get 413 before decoding",
            minimum=1),
    Setting("TWINFER_DECODE_MEMORY", "int", 128 * 1024 * 1024,
            "bytes a worker's picture decodes may hold at once, all its requests together; a picture whose decode "
            "alone takes more gets 413 `image_too_large` before decoding (a PNG over ~22 Mpixel at this default; "
            "JPEGs decode at 1/2-1/8 scale and cost far less), others wait their turn", shown_default="`134217728` "
            "(128 MiB)", minimum=1),
    Setting("TWINFER_DECODE_WAIT", "seconds", 10.0,
            "seconds a picture waits for room in its worker's decode memory (`TWINFER_DECODE_MEMORY`), then 503 "
            "`decode_busy` with `Retry-After: 1`", minimum=0),
    Setting("TWINFER_HEADER_TIMEOUT", "seconds", 10.0,
            "seconds for a request's header block to arrive, then the connection is closed; `0` = no limit",
            minimum=0),
    Setting("TWINFER_CLIENT_PENDING_LIMIT", "int", 32,
            "connections one client address may have sending their TLS handshake or header block at once, per "
            "`gthread` worker; more are closed at accept (\"Security\"); `0` = no limit", minimum=0),
    Setting("TWINFER_BODY_TIMEOUT", "seconds", 10.0,
            "seconds for a request body to arrive after its headers, then 408 `body_timeout` and the connection is "
            "closed; `0` = no limit", minimum=0),
    # --- protection
    Setting("TWINFER_API_TOKENS", "secret", None,
            "comma-separated bearer tokens (16+ characters); when set, every route except the probes (and "
            "`/metrics`, next rows) needs `Authorization: Bearer <token>`", shown_default="unset (API open)"),
    Setting("TWINFER_API_TOKENS_FILE", "path", None,
            "file with one token per line (`#` comments), accepted together with `TWINFER_API_TOKENS`; re-read "
            "within a second of a change (rotation without a restart, no tokens in the environment listing)"),
    Setting("TWINFER_METRICS_PUBLIC", "bool", True,
            "`/metrics` answers without a token (Prometheus on the private module network); `false` puts it behind "
            "the tokens"),
    Setting("TWINFER_TLS_CERT", "path", None,
            "PEM certificate chain: serve HTTPS (with `TWINFER_TLS_KEY`; both or neither)",
            shown_default="unset (plain HTTP)"),
    Setting("TWINFER_TLS_KEY", "path", None, "PEM private key of `TWINFER_TLS_CERT`"),
    # --- the bundled model
    Setting("TWINFER_DEFAULT_MODEL_DIR", "path", _bundled_model_dir, "model staged on an empty store",
            shown_default="`models/default`"),
    Setting("TWINFER_DEFAULT_MODEL_NAME", "text", "ssd-mobilenetv2-oidv4", "its name"),
    Setting("TWINFER_DEFAULT_MODEL_VERSION", "text", "1.0.0", "its version"),
    # --- the twin
    Setting("IOTHUB_MODULE_CONNECTION_STRING", "secret", None,
            "use IoT Hub (or a gateway) as a module instead of the local twin"),
    Setting("IOTHUB_DEVICE_CONNECTION_STRING", "secret", None,
            "use IoT Hub as a device instead of the local twin"),
    Setting("TWINFER_IOTHUB_CA_FILE", "path", None, "CA certificate to trust for the hub or gateway"),
    Setting("TWINFER_TWIN_RETRY_SECONDS", "int", 10, "the SDK's reconnect interval (s)", minimum=1),
    Setting("TWINFER_REPORT_INTERVAL", "seconds", 2.0, "minimum seconds between reported-property updates",
            minimum=0),
    Setting("TWINFER_MODEL_OUTPUT", "text", "DLModelOutput", "module output for the model-ready message"),
    # --- updates
    Setting("TWINFER_KEEP_VERSIONS", "int", 3,
            "versions kept in the store per model (active and previous always kept)", minimum=2),
    Setting("TWINFER_DOWNLOAD_MAX_BPS", "int", 0,
            "download bandwidth cap, bytes/s (the twin's `download.max_bytes_per_second` wins)",
            shown_default="`0` (no cap)", minimum=0),
    Setting("TWINFER_DOWNLOAD_CONNECT_TIMEOUT", "seconds", 10.0, "seconds to connect to the download server",
            minimum=0.1),
    Setting("TWINFER_DOWNLOAD_READ_TIMEOUT", "seconds", 30.0, "seconds without a byte before an attempt fails",
            minimum=0.1),
    Setting("TWINFER_DOWNLOAD_MAX_ATTEMPTS", "int", 8,
            "consecutive attempts without progress before giving up for now", minimum=1),
    Setting("TWINFER_DOWNLOAD_BACKOFF_INITIAL", "seconds", 1.0,
            "seconds: the first retry waits up to this (full jitter), doubling per failed attempt up to 60",
            minimum=0),
    Setting("TWINFER_DOWNLOAD_RANGE_BYTES", "int", 1024 * 1024,
            "download in ranges of this many bytes (>= 65536), each retried on its own; `0` = one request (the "
            "twin's `download.range_bytes` wins)", minimum=0),
    Setting("TWINFER_DOWNLOAD_WINDOWS", "text", None,
            "comma-separated `HH:MM-HH:MM[@bytes/s]` in the device's local time (`TZ`): downloads only then, at "
            "that window's cap (the twin's `download.windows` wins; `model.urgent` ignores them)",
            shown_default="unset (any time)"),
    Setting("TWINFER_SERVE", "bool", True,
            "`false`: headless supervisor, the update pipeline without gunicorn (a download-only device; the fleet "
            "benchmark)"),
    Setting("TWINFER_UPDATE_RETRY_SECONDS", "seconds", 300.0,
            "wait before trying a failed (network) update again", minimum=0.1),
    Setting("TWINFER_MAX_BUNDLE_BYTES", "int", 2 * 1024**3, "unpack limit: bytes of a bundle's files",
            shown_default="2 GiB", minimum=1),
    Setting("TWINFER_MAX_BUNDLE_FILES", "int", 16, "unpack limit: files in a bundle", minimum=1),
    Setting("TWINFER_MODEL_MEMORY_BUDGET", "int", 0,
            "bytes of model weights the pool may hold, all models together (mapped once per host); a desired "
            "model that does not fit is refused with `memory_budget`", shown_default="`0` (no cap)", minimum=0),
    Setting("TWINFER_VARIANT_INT8", "choice", "auto",
            "which devices take a model's `int8` variants (`model.variants`): `auto` where the CPU has int8 "
            "dot-product instructions (x86 VNNI/AMX, Arm dot product), `always`, or `never`; the twin's "
            "`model.variant` overrides it", choices=("auto", "always", "never")),
    Setting("TWINFER_TRUSTED_KEYS", "path", None,
            "PEM file or directory of `*.pem` Ed25519 public keys; when set, only bundles signed by one of them "
            "activate (see \"Signed bundles\")", shown_default="unset (signatures not required)"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def read(name: str, environ: Mapping[str, str] = os.environ) -> Any:
    """The value of the setting ``name`` (a KeyError for a name the table does not declare)."""
    return BY_NAME[name].read(environ)


def readme_table() -> str:
    """The README's configuration table, one row per setting."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.readme_default()} | {s.doc} |" for s in SETTINGS]
    return "\n".join(rows)


def replace_readme_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by ``readme_table()``."""
    start, end = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    return readme[:start] + "\n" + readme_table() + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    """``python -m twinfer.settings_table [--readme [FILE]]``: print the table, or rewrite it in the README."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(readme_table())
        return 0
    if args[0] != "--readme" or len(args) > 2:
        print("usage: python -m twinfer.settings_table [--readme [README.md]]", file=sys.stderr)
        return 2
    readme = Path(args[1] if len(args) == 2 else "README.md")
    readme.write_text(replace_readme_table(readme.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

