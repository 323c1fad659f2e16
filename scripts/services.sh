#!/usr/bin/env bash
# Starts the services the test suite needs, on loopback only, and exports
# where they are. Sourced by scripts/test; safe to run again (idempotent).

# PostgreSQL: Debian's cluster, with a `loads` role that may create the
# per-test databases. LOADS_TEST_POSTGRES_URL, when already set, wins.
# The Debian packages the suite uses, installed when missing (as root, or with
# passwordless sudo): the databases, sshd for the EC2 tests' "instances",
# busybox for the test images, a C toolchain and OpenSSL headers for the build,
# the openssl command for the TLS tests' certificates.
ensure_packages() {
  local packages=(postgresql influxdb curl openssh-server openssh-client busybox-static gcc libc6-dev pkg-config libssl-dev openssl)
  # The EC2 tests' nodes: hosts of their own in network namespaces (a Docker
  # engine on fuse-overlayfs, sshd, a login user with sudo), and, for first
  # boots, virtual machines under software emulation, booting a Debian image
  # built here (mmdebstrap), each with a NoCloud seed.
  packages+=(iproute2 util-linux fuse-overlayfs sudo)
  packages+=(qemu-system-x86 mmdebstrap cloud-image-utils e2fsprogs)
  # The web UI's browser tests: a headless Chromium driven through WebDriver.
  packages+=(chromium chromium-driver)
  python3 -m pip --version >/dev/null 2>&1 || packages+=(python3 python3-pip)
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  echo "installing: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  # qemu's tools may come newer (a backport) than its system emulator can live with:
  # both are then taken from the release itself.
  local release extra=()
  release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]] && [ -n "$release" ] && dpkg-query -W qemu-utils >/dev/null 2>&1; then
    extra=(--allow-downgrades "qemu-utils/$release")
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${extra[@]}" "${missing[@]}"
}

# The EC2 tests' node image: a stock Debian as a cloud instance boots it (kernel,
# cloud-init with its default user `debian` and passwordless sudo, the stock
# sshd, no Docker), with Docker's packages in its apt cache so that a node's
# user-data installs Docker without the network (the VMs have none but the SSH
# port forwarded to loopback). Built once per machine (a few minutes) into
# /var/tmp/loads-vm; LOADS_TEST_VM_DIR, when already set, wins.
ensure_vm_image() {
  if [ -n "${LOADS_TEST_VM_DIR:-}" ]; then
    return 0
  fi
  # Bump `version` when the image's recipe changes: machines then build it again.
  local dir=/var/tmp/loads-vm version=2
  if [ "$(cat "$dir/version" 2>/dev/null)" != "$version" ] || [ ! -f "$dir/image.ext4" ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    echo "building the test nodes' VM image in $dir (once per machine)"
    $sudo rm -rf "$dir/rootfs"
    mkdir -p "$dir"
    $sudo mmdebstrap --quiet --mode=root --variant=apt \
      --include=linux-image-amd64,systemd-sysv,cloud-init,openssh-server,sudo,ca-certificates,iproute2,ifupdown,isc-dhcp-client,netbase,procps \
      --skip=cleanup/apt/cache,cleanup/apt/lists \
      --customize-hook='chroot "$1" apt-get install -y -q --download-only --no-install-recommends docker.io apparmor' \
      --customize-hook='echo "datasource_list: [ NoCloud, None ]" > "$1/etc/cloud/cloud.cfg.d/90-loads-test.cfg"' \
      --customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"' \
      bookworm "$dir/rootfs"
    $sudo cp "$dir"/rootfs/boot/vmlinuz-* "$dir/vmlinuz"
    $sudo cp "$dir"/rootfs/boot/initrd.img-* "$dir/initrd.img"
    $sudo mke2fs -q -t ext4 -d "$dir/rootfs" -L root "$dir/image.tmp" 3G
    $sudo rm -rf "$dir/rootfs"
    $sudo chmod 644 "$dir/vmlinuz" "$dir/initrd.img" "$dir/image.tmp"
    mv "$dir/image.tmp" "$dir/image.ext4"
    echo "$version" > "$dir/version"
  fi
  export LOADS_TEST_VM_DIR="$dir"
}

ensure_postgres() {
  if [ -n "${LOADS_TEST_POSTGRES_URL:-}" ]; then
    return 0
  fi
  if ! command -v pg_lsclusters >/dev/null 2>&1; then
    echo "PostgreSQL is not installed: apt-get install postgresql (or set LOADS_TEST_POSTGRES_URL)" >&2
    return 1
  fi
  local version cluster status
  read -r version cluster _ status _ < <(pg_lsclusters -h | head -n 1) || true
  if [ -z "${version:-}" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    cluster=main
    pg_createcluster "$version" "$cluster" >/dev/null
    status=down
  fi
  if [ "$status" != "online" ]; then
    pg_ctlcluster "$version" "$cluster" start
  fi
  local port
  port=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $3}')
  local i
  for i in $(seq 1 50); do
    runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.2
  done
  runuser -u postgres -- psql -q -p "$port" -v ON_ERROR_STOP=1 <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'loads') THEN
    CREATE ROLE loads LOGIN PASSWORD 'loads' CREATEDB;
  END IF;
END
$$;
SQL
  export LOADS_TEST_POSTGRES_URL="postgres://loads:loads@127.0.0.1:${port}/postgres"
}

# InfluxDB 1.x from Debian's package, with its own configuration bound to
# 127.0.0.1 (the packaged one listens on every interface). LOADS_TEST_INFLUX_URL,
# when already set, wins.
ensure_influx() {
  if [ -n "${LOADS_TEST_INFLUX_URL:-}" ]; then
    return 0
  fi
  if ! command -v influxd >/dev/null 2>&1; then
    echo "InfluxDB is not installed: apt-get install influxdb (or set LOADS_TEST_INFLUX_URL)" >&2
    return 1
  fi
  local dir=/var/tmp/loads-influx port=18086
  if ! curl -sf "http://127.0.0.1:$port/ping" >/dev/null 2>&1; then
    mkdir -p "$dir"
    cat > "$dir/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:18088"
[meta]
  dir = "$dir/meta"
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
[http]
  enabled = true
  bind-address = "127.0.0.1:$port"
  auth-enabled = false
  log-enabled = false
CONF
    nohup influxd -config "$dir/influxdb.conf" > "$dir/influxd.log" 2>&1 &
    local i
    for i in $(seq 1 100); do
      curl -sf "http://127.0.0.1:$port/ping" >/dev/null 2>&1 && break
      sleep 0.2
    done
  fi
  export LOADS_TEST_INFLUX_URL="http://127.0.0.1:$port"
}

# The Docker engine the tests build their images on and run containers with:
# started when none answers (through systemd where it runs, else directly),
# and restarted when one runs but stops answering. DOCKER_HOST, when set, wins.
ensure_docker() {
  [ -n "${DOCKER_HOST:-}" ] && return 0
  timeout 20 docker info >/dev/null 2>&1 && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  if pgrep -x dockerd >/dev/null; then
    echo "the Docker engine does not answer: restarting it"
    $sudo pkill -x dockerd || true
    local i
    for i in $(seq 1 100); do pgrep -x dockerd >/dev/null || break; sleep 0.2; done
    $sudo pkill -KILL -x dockerd 2>/dev/null || true
  else
    echo "starting the Docker engine"
  fi
  if [ -d /run/systemd/system ] && $sudo systemctl start docker 2>/dev/null; then
    :
  else
    mkdir -p /var/tmp/loads-docker
    $sudo nohup /usr/sbin/dockerd > /var/tmp/loads-docker/dockerd.log 2>&1 &
  fi
  local i
  for i in $(seq 1 300); do
    timeout 5 docker info >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the Docker engine did not come up; its log: /var/tmp/loads-docker/dockerd.log" >&2
  return 1
}

# The EC2 test double: PyPI's moto server, on loopback. LOADS_TEST_MOTO_URL,
# when already set, wins.
ensure_moto() {
  if [ -n "${LOADS_TEST_MOTO_URL:-}" ]; then
    return 0
  fi
  if ! command -v moto_server >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5' 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'moto[server]>=5'
  fi
  local port=18500
  if ! curl -s -o /dev/null "http://127.0.0.1:$port/moto-api/" 2>/dev/null; then
    mkdir -p /var/tmp/loads-moto
    nohup moto_server -H 127.0.0.1 -p "$port" > /var/tmp/loads-moto/moto.log 2>&1 &
    local i
    for i in $(seq 1 150); do
      curl -s -o /dev/null "http://127.0.0.1:$port/moto-api/" 2>/dev/null && break
      sleep 0.2
    done
  fi
  export LOADS_TEST_MOTO_URL="http://127.0.0.1:$port"
}

# The OpenAPI validator the API tests run the served document through, a real
# statsd client the metrics tests send with, and OpenTelemetry's Python SDK.
ensure_python_tools() {
  if ! python3 -c 'import statsd' >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check 'statsd>=4' 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'statsd>=4'
  fi
  if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    local spec='openapi-spec-validator>=0.7'
    python3 -m pip install --quiet --disable-pip-version-check "$spec" 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$spec"
  fi
  # Real OpenTelemetry clients for the relay's OTLP tests: the official SDK and its exporters.
  if ! python3 -c 'import opentelemetry.sdk.metrics, opentelemetry.exporter.otlp.proto.http.metric_exporter, opentelemetry.exporter.otlp.proto.grpc.metric_exporter' >/dev/null 2>&1; then
    local otel=(opentelemetry-sdk opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-grpc)
    python3 -m pip install --quiet --disable-pip-version-check "${otel[@]}" 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${otel[@]}"
  fi
  # The API fuzzer the hostile-input test runs (pinned: its check names are part of the test).
  if ! python3 -c 'import schemathesis, sys; sys.exit(schemathesis.__version__ != "4.32.5")' >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check 'schemathesis==4.32.5' 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'schemathesis==4.32.5'
  fi
}

# What the namespace node farm (tests/it/hosts.rs) of a test that died left
# behind: every process in its namespaces, the namespaces, its links, its
# engines' data, the firewall rules of its bridges. Everything of the farm's is
# named loadsf-* or lf*.
remove_farm_leftovers() {
  local ns pid link
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^loadsf-' || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  local rule
  for rule in $( (iptables -S FORWARD 2>/dev/null || true) | grep -E -- '-i lfb[0-9]+ ' | sed 's/^-A FORWARD //; s/ /,/g' || true); do
    # shellcheck disable=SC2086
    iptables -D FORWARD ${rule//,/ } 2>/dev/null || true
  done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^lf(b[0-9]+|[0-9]+-[0-9]+)$' || true); do
    ip link del "$link" 2>/dev/null || true
  done
  if [ -d /var/tmp/loads-farm ]; then
    grep -o ' /var/tmp/loads-farm[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf /var/tmp/loads-farm
  fi
}
