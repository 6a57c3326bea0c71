# twinfer as an IoT Edge module. Multi-arch: no architecture-specific step, so
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/twinfer:<tag> .
FROM python:3.11-slim-bookworm AS build
COPY requirements.txt /tmp/requirements.txt
# Exactly the locked requirements and nothing else (no unpinned `pip install --upgrade pip`:
# the venv's bundled pip installs these wheels, and the build stays reproducible).
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt
# What the service never loads (tests/ops/test_image_trim.py runs the service's imports, both
# engines and a delta without it): LiteRT's WebGPU accelerator, C API library, NPU vendor
# plugins and AOT tool (inference runs on the CPU through the Python wrappers' own runtime),
# zstandard's CFFI backend (the C one is used), numpy's test suites, ONNX Runtime's offline
# tooling, and pip and setuptools (nothing installs at run time). Measured on linux/x86_64
# (du of a venv built this way): 474 MiB before, 374 MiB after.
RUN cd /opt/venv/lib/python3.11/site-packages \
 && rm -rf ai_edge_litert/libLiteRtWebGpuAccelerator.so ai_edge_litert/libLiteRt.so ai_edge_litert/vendors \
      ai_edge_litert/tools/apply_plugin_main \
      zstandard/_cffi.*.so numpy/tests numpy/*/tests \
      onnxruntime/transformers onnxruntime/quantization onnxruntime/tools \
      pip pip-*.dist-info setuptools setuptools-*.dist-info pkg_resources _distutils_hack distutils-precedence.pth \
 && rm -f /opt/venv/bin/pip /opt/venv/bin/pip3 /opt/venv/bin/pip3.11

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin twinfer \
 && mkdir -p /iotedge/storage && chown twinfer /iotedge/storage
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY gunicorn.conf.py ./
COPY service/ service/
COPY workers/ workers/
COPY twinfer/ twinfer/
COPY models/ models/
# ORT_DISABLE_TELEMETRY: ONNX Runtime sends no usage events and keeps no device id
# (twinfer/runtime_env.py forces the same in every process the service starts).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    TWINFER_STORE=/iotedge/storage
USER twinfer
VOLUME /iotedge/storage
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD ["python", "-m", "service.healthcheck"]
# tini is PID 1 so SIGTERM from the Edge agent reaches the supervisor, which forwards it to gunicorn.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "service"]
