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
# a Python the unprivileged task user can run (.venv is built on it when the default
# python3 lives under /root, as pyenv's does): native tasks use the venv's interpreter
APT_PACKAGES+=(python3 python3-venv python3-dev)
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
# Native tasks run as $EDGE_TASK_USER when the node engine is root; tasks and tests that
# run the venv's python (inference workers, test scripts) need an interpreter that user
# can execute. A Python under /root (pyenv) is not: then /usr/bin/python3 is taken if it
# is recent enough, and an existing .venv built on an unreachable one is built again.
task_user_runs() {  # $1 = a python; true when $EDGE_TASK_USER can run it (or we are not root)
  [ "$(id -u)" -eq 0 ] || return 0
  command -v runuser >/dev/null 2>&1 || return 0
  local exe
  exe=$("$1" -c 'import sys; print(sys.executable)' 2>/dev/null) || return 1
  runuser -u "$EDGE_TASK_USER" -- "$exe" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    2>/dev/null
}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if ! task_user_runs python3 && [ -x /usr/bin/python3 ] && task_user_runs /usr/bin/python3 \
    && /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; then
    log "python3 ($(command -v python3)) is not executable by $EDGE_TASK_USER: using /usr/bin/python3"
    PYTHON=/usr/bin/python3
  fi
fi
if [ -x .venv/bin/python ] && ! task_user_runs .venv/bin/python && task_user_runs "$PYTHON"; then
  log "rebuilding .venv on $PYTHON (its interpreter is not executable by $EDGE_TASK_USER)"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! task_user_runs .venv/bin/python; then
  log "warning: $EDGE_TASK_USER cannot run .venv/bin/python: native tasks that use it will fail"
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
