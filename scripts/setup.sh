#!/usr/bin/env bash
# Installs everything the system and its tests need on a fresh Debian/Ubuntu machine:
# Debian packages (mosquitto, docker.io, busybox-static, chromium, ...), a running Docker engine,
# and a virtualenv in .venv with the project and its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# ---- Debian packages ---------------------------------------------------------------
APT_PACKAGES=(mosquitto mosquitto-clients docker.io busybox-static docker-compose iproute2)
# headless browser for the dashboard tests (tests/e2e/test_dashboard_browser.py)
APT_PACKAGES+=(chromium chromium-driver fonts-dejavu-core)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts a system-wide mosquitto on :1883 when it can; we run our own brokers.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

# ---- run-as user for native tasks ----------------------------------------------------
# A node engine running as root runs native tasks as this unprivileged system user
# (node engine setting native_run_as, default edge-task; docs/node-engine.md).
EDGE_TASK_USER="${EDGE_TASK_USER:-edge-task}"
if ! getent passwd "$EDGE_TASK_USER" >/dev/null; then
  log "creating system user $EDGE_TASK_USER (no login shell, no home) for native tasks"
  if command -v useradd >/dev/null 2>&1; then
    $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "edge orchestrator native tasks" "$EDGE_TASK_USER"
  else
    $SUDO adduser -S -D -H -h /nonexistent -s /sbin/nologin "$EDGE_TASK_USER"
  fi
fi

# ---- Docker engine -------------------------------------------------------------------
if [ "${EDGE_SKIP_DOCKER:-0}" != "1" ]; then
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    mkdir -p /var/log
    $SUDO sh -c 'nohup setsid dockerd >/var/log/edge-dockerd.log 2>&1 &'
    deadline=$((SECONDS + 90))
    until docker info >/dev/null 2>&1; do
      if [ $SECONDS -ge $deadline ]; then
        log "dockerd did not answer within 90 s; last log lines:"; tail -n 30 /var/log/edge-dockerd.log || true
        exit 1
      fi
      sleep 0.5
    done
  fi
  log "docker engine answers ($(docker version --format '{{.Server.Version}}'))"
fi

# ---- Python ----------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "installing the project and its test extras into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
log "ready"
