#!/usr/bin/env bash
# Tunnel throughput benchmark (issue #6): iperf3 TCP single stream and 4 streams, ping RTT and
# gateway CPU seconds per GB through
#   plain   - the plain routed link (no tunnel)
#   dp-gcm  - the hybridgw data plane, manual keys, AES-256-GCM
#   dp-cbc  - the hybridgw data plane, manual keys, AES-256-CBC + HMAC-SHA2-256-128
#   ss-gcm  - strongSwan kernel-libipsec (IKEv2 PSK, encap=yes), AES-256-GCM
#   ss-cbc  - strongSwan kernel-libipsec, AES-256-CBC + HMAC-SHA2-256-128
# and prints every figure with its ratio to strongSwan (same suite) and to the plain link.
#
# Topology (per variant, built fresh and removed afterwards): two namespaces joined by a veth
# pair 192.0.2.1/24 <-> 192.0.2.2/24; the protected addresses 198.18.1.1 and 198.19.1.1 live on
# loopback of each gateway namespace and iperf3/ping run between them, so each namespace is host
# and gateway at once. Both tunnel ends, iperf3 and the kernel share the machine's cores.
#
# Usage (as root, from the repository root):  benches/tunnel/run.sh
# Environment: DURATION (s per iperf3 run, default 10), RUNS (median of, default 3),
#              WORKERS (data plane workers, default 1), VARIANTS (default all five).
set -euo pipefail

DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-1}
VARIANTS=${VARIANTS:-"plain dp-gcm dp-cbc ss-gcm ss-cbc"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/tunnel-bench.XXXXXX)
A="tbench-a-$$"
B="tbench-b-$$"
PIDS=()

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for t in ip iperf3 ping charon-systemd swanctl; do
    command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done

stop_pids() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    PIDS=()
}
teardown() {
    stop_pids
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
}
cleanup() {
    teardown
    [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT INT TERM

echo "building the data plane (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p dataplane --example manual_tunnel)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
DP="$TARGET_DIR/release/examples/manual_tunnel"

setup_ns() {
    ip netns add "$A"
    ip netns add "$B"
    ip link add tbva netns "$A" type veth peer name tbvb netns "$B"
    ip -n "$A" link set lo up
    ip -n "$B" link set lo up
    ip -n "$A" addr add 192.0.2.1/24 dev tbva
    ip -n "$B" addr add 192.0.2.2/24 dev tbvb
    ip -n "$A" link set tbva up
    ip -n "$B" link set tbvb up
    ip -n "$A" addr add 198.18.1.1/32 dev lo
    ip -n "$B" addr add 198.19.1.1/32 dev lo
    # Stop IPv6 chatter from entering the tunnels.
    ip netns exec "$A" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    ip netns exec "$B" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
}

# Each start_* sets GW_PIDS (the gateway processes whose CPU time is measured).
start_plain() {
    ip -n "$A" route add 198.19.1.0/24 via 192.0.2.2 src 198.18.1.1
    ip -n "$B" route add 198.18.1.0/24 via 192.0.2.1 src 198.19.1.1
    GW_PIDS=""
}

start_dp() { # suite
    ip netns exec "$A" "$DP" --bind 192.0.2.1:4500 --peer 192.0.2.2:4500 --tun tbtun0 --suite "$1" \
        --spi-out 0x1001 --spi-in 0x2001 --workers "$WORKERS" >"$W/dp-a.log" 2>&1 &
    PIDS+=($!); local pa=$!
    ip netns exec "$B" "$DP" --bind 192.0.2.2:4500 --peer 192.0.2.1:4500 --tun tbtun0 --suite "$1" \
        --spi-out 0x2001 --spi-in 0x1001 --workers "$WORKERS" >"$W/dp-b.log" 2>&1 &
    PIDS+=($!); local pb=$!
    for _ in $(seq 50); do grep -q ready "$W/dp-a.log" 2>/dev/null && grep -q ready "$W/dp-b.log" 2>/dev/null && break; sleep 0.1; done
    ip -n "$A" route add 198.19.1.0/24 dev tbtun0 src 198.18.1.1
    ip -n "$B" route add 198.18.1.0/24 dev tbtun0 src 198.19.1.1
    GW_PIDS="$pa $pb"
}

start_ss() { # esp proposal
    for side in a b; do
        cat >"$W/$side.conf" <<CONF
charon {
    load = random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 pubkey x509 kernel-libipsec kernel-netlink socket-default vici updown
    routing_table_prio = 32767
    plugins {
        vici { socket = unix://$W/$side.vici }
        kernel-libipsec { load = yes }
    }
    filelog { $side { path = $W/$side.log
                      default = 1 } }
    syslog { daemon { default = -1 } }
    journal { default = -1 }
}
CONF
    done
    sw() { # local remote lid rid lnet rnet
        cat <<CONF
connections { bench { version = 2
    local_addrs = $1
    remote_addrs = $2
    encap = yes
    proposals = aes256-sha256-modp2048
    local { auth = psk
            id = $3 }
    remote { auth = psk
             id = $4 }
    children { t { local_ts = $5
                   remote_ts = $6
                   esp_proposals = $ESP } } } }
secrets { ike-bench { id-a = a.example
                      id-b = b.example
                      secret = "lab-only-psk-not-secret-0123456789" } }
CONF
    }
    ESP=$1
    sw 192.0.2.1 192.0.2.2 a.example b.example 198.18.1.0/24 198.19.1.0/24 >"$W/a-swanctl.conf"
    sw 192.0.2.2 192.0.2.1 b.example a.example 198.19.1.0/24 198.18.1.0/24 >"$W/b-swanctl.conf"
    rm -f "$W/a.vici" "$W/b.vici"
    STRONGSWAN_CONF="$W/a.conf" ip netns exec "$A" charon-systemd >"$W/charon-a.out" 2>&1 &
    PIDS+=($!); local pa=$!
    STRONGSWAN_CONF="$W/b.conf" ip netns exec "$B" charon-systemd >"$W/charon-b.out" 2>&1 &
    PIDS+=($!); local pb=$!
    for side in a b; do
        for _ in $(seq 100); do [ -S "$W/$side.vici" ] && break; sleep 0.1; done
        swanctl --load-all --uri "unix://$W/$side.vici" --file "$W/$side-swanctl.conf" >/dev/null
    done
    swanctl --initiate --uri "unix://$W/a.vici" --child t --timeout 10 >/dev/null
    GW_PIDS="$pa $pb"
}

cpu_ticks() { # sum of utime+stime of GW_PIDS and their threads
    local t=0
    for p in $GW_PIDS; do
        # charon-systemd / manual_tunnel are the direct children of `ip netns exec` (exec'd).
        [ -r "/proc/$p/stat" ] || continue
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

iperf_run() { # streams -> prints "gbps gbytes"
    ip netns exec "$B" iperf3 -s -1 -B 198.19.1.1 >/dev/null 2>&1 &
    local srv=$!
    sleep 0.3
    ip netns exec "$A" iperf3 -c 198.19.1.1 -B 198.18.1.1 -t "$DURATION" -P "$1" -J >"$W/iperf.json" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
    python3 - "$W/iperf.json" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
    e = j["end"]["sum_received"]
    print(f'{e["bits_per_second"]/1e9:.3f} {e["bytes"]/1e9:.4f}')
except Exception:
    print("nan 0")
PY
}

measure() { # variant -> writes results to $W/res-$variant
    local v=$1 single=() multi=() cpu=() hz
    hz=$(getconf CLK_TCK)
    for _ in $(seq "$RUNS"); do
        local c0 c1 r
        c0=$(cpu_ticks)
        r=$(iperf_run 1)
        c1=$(cpu_ticks)
        single+=("${r% *}")
        local gb=${r#* }
        if [ -n "$GW_PIDS" ] && [ "$gb" != 0 ]; then
            cpu+=("$(python3 -c "print(($c1-$c0)/$hz/$gb)")")
        fi
        r=$(iperf_run 4)
        multi+=("${r% *}")
    done
    local rtt
    rtt=$(ip netns exec "$A" ping -q -c 50 -i 0.02 -I 198.18.1.1 198.19.1.1 2>/dev/null | awk -F/ '/rtt/ {print $5}')
    # median RTT from individual samples
    local rtts
    rtts=$(ip netns exec "$A" ping -c 50 -i 0.02 -I 198.18.1.1 198.19.1.1 2>/dev/null | sed -n 's/.*time=\([0-9.]*\) ms/\1/p')
    local rmed rp99
    rmed=$(echo "$rtts" | median)
    rp99=$(echo "$rtts" | sort -g | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; print a[i]}')
    {
        echo "single $(printf '%s\n' "${single[@]}" | median)"
        echo "multi $(printf '%s\n' "${multi[@]}" | median)"
        echo "rtt $rmed"
        echo "rtt99 $rp99"
        if [ ${#cpu[@]} -gt 0 ]; then echo "cpu $(printf '%s\n' "${cpu[@]}" | median)"; else echo "cpu nan"; fi
    } >"$W/res-$v"
    : "$rtt"
}

for v in $VARIANTS; do
    echo "== $v" >&2
    setup_ns
    case $v in
        plain) start_plain ;;
        dp-gcm) start_dp gcm ;;
        dp-cbc) start_dp cbc ;;
        ss-gcm) start_ss aes256gcm16 ;;
        ss-cbc) start_ss aes256-sha256 ;;
        *) echo "unknown variant $v" >&2; exit 1 ;;
    esac
    if ! ip netns exec "$A" ping -c 2 -i 0.2 -W 2 -I 198.18.1.1 198.19.1.1 >/dev/null; then
        echo "$v: no connectivity through the tunnel" >&2
        teardown
        continue
    fi
    measure "$v"
    cat "$W/res-$v" >&2
    teardown
done

python3 - "$W" $VARIANTS <<'PY'
import sys, pathlib, math
w = pathlib.Path(sys.argv[1]); variants = sys.argv[2:]
res = {}
for v in variants:
    p = w / f"res-{v}"
    if p.exists():
        res[v] = {k: float(x) for k, x in (l.split() for l in p.read_text().splitlines())}
def ratio(a, b):
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return "  -  "
    return f"{a/b:5.2f}x"
ref = {"dp-gcm": "ss-gcm", "dp-cbc": "ss-cbc", "ss-gcm": "ss-gcm", "ss-cbc": "ss-cbc"}
rows = [("single", "TCP 1 stream Gbit/s"), ("multi", "TCP 4 streams Gbit/s"), ("rtt", "ping RTT median ms"),
        ("rtt99", "ping RTT p99 ms"), ("cpu", "gateway CPU s/GB")]
print(f"| variant | metric | value | vs strongSwan (same suite) | vs plain link |")
print(f"|---|---|---|---|---|")
for v in variants:
    if v not in res:
        print(f"| {v} | (no result) | | | |"); continue
    for k, name in rows:
        val = res[v].get(k)
        s = res.get(ref.get(v, ""), {}).get(k)
        pl = res.get("plain", {}).get(k)
        print(f"| {v} | {name} | {val:.3f} | {ratio(val, s) if v in ref else '  -  '} | {ratio(val, pl)} |")
PY
