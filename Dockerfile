# twinfer as an IoT Edge module. Multi-arch: no architecture-specific step, so
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/twinfer:<tag> .
FROM python:3.11-slim-bookworm AS build
COPY requirements.txt /tmp/requirements.txt
# Exactly the locked requirements and nothing else (no unpinned `pip install --upgrade pip`:
# the venv's bundled pip installs these wheels, and the build stays reproducible).
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

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
COPY models/ models/
# ORT_DISABLE_TELEMETRY: ONNX Runtime sends no usage events and keeps no device id
# (workers/runtime_env.py forces the same in every process the service starts).
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
