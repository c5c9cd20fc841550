#!/usr/bin/env bash
# The one command that runs every hybridgw test on a fresh Debian 12 machine, as root:
# installs the missing system packages, makes sure no Debian charon service runs, builds all
# binaries and runs the whole workspace's tests in release mode (end-to-end tests included: they
# create their own network namespaces and need root, strongSwan, tshark, tcpdump, iperf3, bird2).
#
# Usage: sudo scripts/test-all.sh [extra `cargo test` arguments, e.g. a test name filter]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
log() { printf 'test-all: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (tests create network namespaces, TUN devices and run charon/tcpdump); try: sudo $0"
[ "$(uname -s)" = Linux ] || die "Linux only"

# --- system packages -------------------------------------------------------------------------
PKGS=(charon-systemd strongswan-swanctl strongswan-charon libcharon-extra-plugins
      libstrongswan-standard-plugins iperf3 tshark tcpdump iproute2 bird2 nftables ethtool
      iputils-ping procps python3 keepalived prometheus)
command -v cc >/dev/null 2>&1 || PKGS+=(build-essential)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get (Debian 12 expected)"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer no without a prompt.
    echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections 2>/dev/null || true
    apt-get update -q
    # libstrongswan-standard-plugins (AES-GCM, aesni, openssl) is only "Recommended": it is listed
    # explicitly, so --no-install-recommends is safe.
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "all system packages present"
fi

# --- environment ---------------------------------------------------------------------------------
# Debian's strongSwan services must not run: the tests start their own charon per namespace.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for svc in strongswan.service strongswan-starter.service ipsec.service; do
        if systemctl is-active --quiet "$svc" 2>/dev/null; then
            log "stopping $svc"
            systemctl stop "$svc"
        fi
    done
fi
for pidfile in /var/run/charon.pid /run/charon.pid; do
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        die "a system charon (pid $(cat "$pidfile"), from $pidfile) is running; stop the strongSwan service first"
    fi
done
# kernel-libipsec and the data plane need a TUN device node.
if [ ! -c /dev/net/tun ]; then
    log "creating /dev/net/tun"
    mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun
fi
for tool in charon-systemd swanctl tshark tcpdump iperf3 ip nft ping bird; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || die "$tool not found after installing packages"
done

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust stable (1.95, e.g. with rustup) first"
log "$(cargo --version), $(rustc --version)"

# --- build and test ------------------------------------------------------------------------------
log "cargo build --release --workspace --bins"
cargo build --release --workspace --bins

out=$(mktemp -t test-all.XXXXXX)
trap 'rm -f "$out"' EXIT
log "cargo test --release --workspace --no-fail-fast $*"
set +e
cargo test --release --workspace --no-fail-fast "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e

# Sum the "test result:" lines of every test binary (awk: no failure when there are none).
sum() { awk -v k="$1" '/^test result:/ { for (i = 2; i <= NF; i++) if ($i ~ "^" k) s += $(i-1) } END { print s+0 }' "$out"; }
passed=$(sum passed)
failed=$(sum failed)
ignored=$(sum ignored)
suites=$(awk '/^test result:/ { n++ } END { print n+0 }' "$out")
secs=$(( $(date +%s) - start ))
# Targets cargo reports as failed (a test binary with failures, a doctest that did not compile, ...).
targets=$(awk '/^error: [0-9]+ targets? failed:/ { f = 1; next } f && /^    `/ { print; next } { f = 0 }' "$out" | sed 's/^ *//' | sort -u | paste -sd ' ' -)
if [ "$rc" -eq 0 ]; then
    echo "test-all: PASSED: $passed tests passed, $failed failed, $ignored ignored in $suites suites ($secs s)"
else
    grep -E '^failures:|^    [a-zA-Z0-9_:]+$|error: test failed|^error(\[E[0-9]+\])?:' "$out" | sort -u | head -40 >&2 || true
    echo "test-all: FAILED (cargo exit $rc): $passed tests passed, $failed failed, $ignored ignored in $suites suites; failed targets: ${targets:-see above} ($secs s)"
fi
exit "$rc"
