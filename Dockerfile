# pulse-relay container image: slim Python, a non-root user, state in a volume.
#
#   docker build -t pulse-relay .
#   docker run -d -p 8787:8787 -v pulse-relay-state:/var/lib/pulse-relay \
#     -e PULSE_WEBHOOK_SECRET=whsec_... -e PULSE_API_KEY=... pulse-relay
#
# The webhook port 8787 is the only one to publish. The admin listener (readiness,
# metrics, the control API, the inspector) stays on 127.0.0.1:8788 inside the
# container, where `pulse-relay healthcheck` and `docker exec` reach it. To open it
# to other containers, set PULSE_RELAY_ADMIN__HOST=0.0.0.0 and a token
# (PULSE_RELAY_ADMIN__TOKEN_FILE=/run/secrets/admin-token): without one the relay
# refuses to start. See examples/docker-compose.yml for the sidecar set-up.

FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/pulse-relay
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
# The runtime dependencies exactly as uv.lock pins them (hashes checked), then the
# relay itself, not editable. uv stays in the build stage.
RUN pip install uv \
    && uv sync --locked --no-dev --no-editable --python /usr/local/bin/python3

FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/pulse-relay/bin:$PATH \
    # Reachable from other containers; the store lives in the volume below.
    PULSE_RELAY_SERVER__HOST=0.0.0.0 \
    PULSE_RELAY_STORE__PATH=/var/lib/pulse-relay/pulse-relay.db \
    PULSE_RELAY_LOG__FORMAT=json
COPY --from=build /opt/pulse-relay /opt/pulse-relay
# A fixed uid/gid, so volume permissions can be planned on the host. /results is
# the usual mount point of a shared results volume: a named volume mounted there
# starts out owned by this user.
RUN groupadd --system --gid 10001 pulse-relay \
    && useradd --system --uid 10001 --gid pulse-relay --home-dir /var/lib/pulse-relay \
       --shell /usr/sbin/nologin pulse-relay \
    && install -d -o pulse-relay -g pulse-relay -m 0700 /var/lib/pulse-relay \
    && install -d -o pulse-relay -g pulse-relay -m 0755 /results \
    && install -d -m 0755 /etc/pulse-relay
USER pulse-relay:pulse-relay
WORKDIR /var/lib/pulse-relay
VOLUME ["/var/lib/pulse-relay"]
EXPOSE 8787
# No curl in a slim image: the relay probes itself (GET /healthz on its admin port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["pulse-relay", "healthcheck"]
# SIGTERM (docker stop) starts the graceful shutdown; give it more than
# server.shutdown_grace_seconds with `docker stop -t` / compose stop_grace_period.
STOPSIGNAL SIGTERM
# Every command runs with umask 077 (serve sets it too): the store and the
# files written hold customer documents. `exec` keeps pulse-relay as PID 1, so
# it receives the stop signal itself.
ENTRYPOINT ["/bin/sh", "-c", "umask 077 && exec pulse-relay \"$@\"", "pulse-relay"]
CMD ["serve"]
