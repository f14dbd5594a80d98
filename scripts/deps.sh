#!/usr/bin/env bash
# Installs what cove needs from Debian's packages, only what is missing, and
# creates the unprivileged user QEMU runs as. Safe to run again.
set -euo pipefail

need_pkgs=()
want() { # want COMMAND PACKAGE
	command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2")
}
want qemu-system-x86_64 qemu-system-x86
want qemu-img qemu-utils
want mkfs.ext4 e2fsprogs
want debootstrap debootstrap
want xz xz-utils
want dpkg-deb dpkg
# Templates that follow a repository: the server fetches and bundles it.
want git git
# The E2B-compatible API's tests drive the official E2B SDK (npm 'e2b').
want node nodejs
want npm npm
# Regenerating envd's Go from cove's .proto files (go generate
# ./internal/e2b/envdpb): protoc, with the well-known types' .proto files.
want protoc protobuf-compiler
wkt_status=$(dpkg-query -W -f='${Status}' libprotobuf-dev 2>/dev/null || true)
[[ $wkt_status == *"ok installed"* ]] || need_pkgs+=(libprotobuf-dev)
# The dashboard's tests drive a headless browser (chromedp).
want chromium chromium
# The tiny image needs the static busybox (the dynamic one would need libc).
bb_status=$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null || true)
[[ $bb_status == *"ok installed"* ]] || need_pkgs+=(busybox-static)
# The PostgreSQL store's tests start their own server (package pgtest);
# initdb and postgres are not on PATH, so ask dpkg.
pg_status=$(dpkg-query -W -f='${Status}' postgresql-15 2>/dev/null || true)
[[ $pg_status == *"ok installed"* ]] || need_pkgs+=(postgresql-15)

if ! command -v go >/dev/null 2>&1; then
	echo "deps: Go is missing: install Go 1.26 (this machine image ships it at /usr/local/go)" >&2
	exit 1
fi

if [ "$(id -u)" != 0 ]; then
	if [ ${#need_pkgs[@]} -gt 0 ]; then
		echo "deps: missing packages (${need_pkgs[*]}); run as root to install them" >&2
		exit 1
	fi
	exit 0
fi

# apt-get download (the guest kernel) needs package lists.
lists_ok() { local p; p=$(apt-cache policy linux-image-amd64 2>/dev/null); [[ $p == *"Candidate: "[0-9]* ]]; }
if [ ${#need_pkgs[@]} -gt 0 ] || ! lists_ok; then
	echo "deps: apt-get update"
	apt-get update -q >/dev/null
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
	# Debian makes and starts a "main" PostgreSQL cluster when it installs
	# the server; the tests start their own, so none is made.
	mkdir -p /etc/postgresql-common/createcluster.d
	echo "create_main_cluster = off" >/etc/postgresql-common/createcluster.d/cove.conf
	echo "deps: installing ${need_pkgs[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! id cove-vm >/dev/null 2>&1; then
	echo "deps: creating user cove-vm (QEMU runs as it)"
	useradd --system --no-create-home --shell /usr/sbin/nologin cove-vm
fi
if ! id cove-pg >/dev/null 2>&1; then
	echo "deps: creating user cove-pg (the PostgreSQL store's tests run their server as it)"
	useradd --system --no-create-home --shell /usr/sbin/nologin cove-pg
fi
