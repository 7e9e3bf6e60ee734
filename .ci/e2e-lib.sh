# Shared pieces of the end-to-end scripts (.ci/e2e-seaweedfs.sh, .ci/docker.sh), sourced, not run:
# SeaweedFS with SigV4 credentials, the simulator, the exporter's settings towards both, and the
# waits. Every server binds 127.0.0.1; every wait has a deadline.
#
# The sourcing script sets `root` (the checkout) and `work` (a scratch directory it removes), and
# appends every background process it starts to `pids`.

bin="$root/target/release/opencti-stream-exporter"
venv="$root/target/ci-venv"
stream_id=4f6e2a8c-1b3d-4e5f-9a7b-0c2d4e6f8a1b
access_key=e2e-exporter
secret_key=e2e-secret-$RANDOM$RANDOM
token=e2e-token-$RANDOM$RANDOM

# Prints the message and the last lines of every log under $work, then exits 1.
fail() {
  echo "${log_prefix:-e2e}: $*" >&2
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

# Starts SeaweedFS (`weed mini`) answering S3 on 127.0.0.1:$s3_port with $access_key/$secret_key.
start_seaweedfs() {
  s3_port=$(free_port)
  cat > "$work/s3.json" <<JSON
{"identities": [{"name": "exporter",
  "credentials": [{"accessKey": "$access_key", "secretKey": "$secret_key"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  mkdir -p "$work/weed"
  (cd "$work/weed" && exec "$venv/bin/weed" mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$s3_port" -s3.config="$work/s3.json" \
    -master.port="$(free_port)" -master.port.grpc="$(free_port)" \
    -volume.port="$(free_port)" -volume.port.grpc="$(free_port)" \
    -filer.port="$(free_port)" -filer.port.grpc="$(free_port)" \
    -admin.ui=false -webdav=false) > "$work/seaweedfs.log" 2>&1 &
  pids+=($!)
  wait_for 90 s3_ready || fail "SeaweedFS did not answer S3 requests within 90 s"
}

s3_ready() {
  "$venv/bin/python" - "$s3_port" "$access_key" "$secret_key" <<'PY'
import sys
from minio import Minio
Minio(f"127.0.0.1:{sys.argv[1]}", access_key=sys.argv[2], secret_key=sys.argv[3], secure=False).list_buckets()
PY
}

# Starts the simulator with $1 live events and any further simulator options; sets sim_port,
# sim_pid, first_id and last_id (the live log's first and last event ids) and recover_until (just
# before the live log, so a first start has both a recovery and every live event). Every data
# event served is written to $work/served.json when the simulator stops.
start_simulator() {
  local events=$1; shift
  sim_port=$(free_port)
  SIMULATOR_TOKEN="$token" "$bin" simulate --port "$sim_port" --events "$events" --seed 7 \
    --knowledge-base 2000 --heartbeat-ms 500 --served-log "$work/served.json" "$@" \
    > "$work/simulator.log" 2>&1 &
  sim_pid=$!
  pids+=($sim_pid)
  wait_for 30 grep -q "OpenCTI simulator at" "$work/simulator.log" || fail "the simulator did not start"
  first_id=$(sed -n 's/.*ids \([0-9-]*\) \.\. [0-9-]*;.*/\1/p' "$work/simulator.log" | head -n 1)
  last_id=$(sed -n 's/.*ids [0-9-]* \.\. \([0-9-]*\);.*/\1/p' "$work/simulator.log" | head -n 1)
  [ -n "$first_id" ] && [ -n "$last_id" ] || fail "cannot read the simulator's event ids"
  recover_until=$("$venv/bin/python" -c '
import datetime, sys
ms = int(sys.argv[1].split("-")[0]) - 1
print(datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
' "$first_id")
}

# Stops the simulator so that it writes its served log.
stop_simulator() {
  kill -TERM "$sim_pid"
  wait "$sim_pid" || true
  [ -s "$work/served.json" ] || fail "the simulator wrote no served log"
}

# Prints the exporter's settings towards the simulator and SeaweedFS, one NAME=value a line, with
# its endpoint on 127.0.0.1:$1. The WAL directory is the caller's.
exporter_settings() {
  cat <<ENV
OPENCTI_URL=http://127.0.0.1:$sim_port
OPENCTI_TOKEN=$token
CONNECTOR_ID=3c6d1e0a-5b7f-4c2d-9e8a-1f0b2c3d4e5f
CONNECTOR_NAME=e2e-exporter
CONNECTOR_LIVE_STREAM_ID=$stream_id
CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES=false
CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE=$recover_until
MINIO_ENDPOINT=127.0.0.1
MINIO_PORT=$s3_port
MINIO_BUCKET=opencti-export
MINIO_FOLDER=opencti-stream
MINIO_ACCESS_KEY=$access_key
MINIO_SECRET_KEY=$secret_key
MINIO_SECURE=false
WRITE_EVERY_SEC=2
WRITE_MAX_BYTES=4MiB
CONNECTOR_METRICS_PORT=$1
CONNECTOR_METRICS_BIND=127.0.0.1
ENV
}

# The exporter's /status on 127.0.0.1:$1 as JSON, or failure.
status_json() {
  "$venv/bin/python" -c '
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status", timeout=2).read().decode())
' "$1"
}

# Succeeds once the exporter on 127.0.0.1:$1 has uploaded everything up to $last_id.
exported_everything() {
  "$venv/bin/python" - "$1" "$last_id" <<'PY'
import json, sys, urllib.request
status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status", timeout=2))
ms, seq = (int(p) for p in sys.argv[2].split("-"))
cursor = tuple(int(p) for p in (status.get("cursor") or "0-0").split("-"))
done = cursor >= (ms, seq) and status["backlog_events"] == 0 and status["files_waiting"] == 0
sys.exit(0 if done else 1)
PY
}

# Reads the bucket back as the stock importer does and compares it with what the simulator
# served; extra arguments go to .ci/importer_check.py. Prints the summary.
importer_check() {
  "$venv/bin/python" "$root/.ci/importer_check.py" "127.0.0.1:$s3_port" "$access_key" "$secret_key" \
    opencti-export/opencti-stream --expect-ids "$work/served.json" "$@" > "$work/check.json" \
    || { cat "$work/check.json" >&2; fail "the importer's read-back found problems"; }
  echo "${log_prefix:-e2e}: OK $(cat "$work/check.json")"
}

# Fails if a secret appears in file $1.
no_secrets_in() {
  if grep -q -e "$secret_key" -e "$token" "$1"; then
    fail "a secret appears in $(basename "$1")"
  fi
}
