#!/usr/bin/env bash
# make demo: a local system (root, 2 clusters x 2 nodes) in the background, an example
# job submitted with --wait and shown RUNNING, then how to stop it. Idempotent: a system
# already running in the data directory is reused, a stopped one is resumed, and a job
# that already runs is shown instead of submitted again.
#
# Usage: scripts/demo.sh   (after `make setup`; EDGE_DATA_DIR picks the data directory)
set -euo pipefail
cd "$(dirname "$0")/.."

EDGECTL="${EDGECTL:-.venv/bin/edgectl}"
DATA_DIR="${EDGE_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/edge}"
JOB_FILE=examples/multi-replica-job.yaml
JOB=detector
if [ -t 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi
run() { printf '$ %s\n' "edgectl $*"; "$EDGECTL" "$@"; }

# The busybox image of examples/docker-job.yaml (built locally, nothing is pulled).
bash scripts/build_test_image.sh >/dev/null 2>&1 || echo "demo: no Docker test image (docker example unavailable)"

step "a local system: Mosquitto per cluster, root, 2 clusters x 2 node engines"
status_json="$("$EDGECTL" local status --data-dir "$DATA_DIR" -o json 2>/dev/null || true)"
if printf '%s' "$status_json" | grep -q '"running": true'; then
  echo "already running in $DATA_DIR"
elif [ -f "$DATA_DIR/system.json" ]; then
  run local up --detach --data-dir "$DATA_DIR"
else
  run local up --detach --clusters 2 --nodes-per-cluster 2 --data-dir "$DATA_DIR"
fi

step "clusters and nodes"
run clusters ls --data-dir "$DATA_DIR"
run nodes ls --data-dir "$DATA_DIR"

step "a job: 3 replicas on the nodes with a camera, spread"
state="$("$EDGECTL" jobs get "$JOB" --data-dir "$DATA_DIR" -o json 2>/dev/null \
  | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null || true)"
case "$state" in
  ""|TERMINATING|TERMINATED)
    run jobs submit -f "$JOB_FILE" --wait --data-dir "$DATA_DIR" -o json >/dev/null ;;
  *)
    echo "job $JOB already submitted ($state); waiting until it runs"
    run jobs scale "$JOB" 3 --wait --data-dir "$DATA_DIR" -o json >/dev/null ;;
esac
run jobs get "$JOB" --data-dir "$DATA_DIR"

step "next"
flag=""
[ "$DATA_DIR" = "${XDG_DATA_HOME:-$HOME/.local/share}/edge" ] || flag=" --data-dir $DATA_DIR"
cat <<TXT
edgectl is in .venv/bin (source .venv/bin/activate, or call .venv/bin/edgectl):
  edgectl jobs explain $JOB$flag    # why each replica runs where it runs
  edgectl events --follow$flag      # every state change, live
  edgectl jobs submit -f examples/docker-job.yaml --wait$flag
The system keeps running in the background. Stop it (and every task it runs) with:
  edgectl local down$flag
TXT
