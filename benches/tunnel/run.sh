#!/usr/bin/env bash
# Tunnel benchmark (issue #6): the hybridgw appliance against strongSwan kernel-libipsec and the
# plain routed link, in one run on the same four-namespace topology. Variants:
#   plain    - the plain routed link (no tunnel)
#   hgw-gcm  - two hybridgw appliances (`hybridgw run --config F`, IKEv2 PSK), AES-256-GCM-16
#   hgw-cbc  - the same with AES-256-CBC + HMAC-SHA2-256-128
#   ss-gcm   - two strongSwan charons, kernel-libipsec (IKEv2 PSK, encap = yes), AES-256-GCM-16
#   ss-cbc   - the same with AES-256-CBC + HMAC-SHA2-256-128
#   dp-gcm   - extra row: the data plane alone with manual keys and WORKERS workers
#              (crates/dataplane/examples/manual_tunnel.rs), to separate the data plane from
#              the appliance's choices (it runs one worker per core, two here)
#   dp-cbc   - the same with AES-256-CBC + HMAC-SHA2-256-128 (not in the default list)
# Measured for each: iperf3 TCP 1 stream and 4 streams (median of RUNS runs of DURATION s),
# the UDP rate of 1400-byte inner packets at <= 0.1 % loss (bounded search, UDP_STEPS runs of
# UDP_DURATION s), ping RTT median and p99 (PINGS pings 20 ms apart, plus the median of 1000
# pings 1 ms apart), ping RTT median and p99 while one TCP stream fills the tunnel (the
# queueing delay the gateways add under load), the CPU seconds per GB of the two gateway
# processes (single-stream runs; iperf3's socket buffers are set to 4 MB for UDP so that the
# receiving iperf3 itself does not drop), and the gateways' CPU (cores busy) with TCP offered at
# RATE (default 2.3G: Azure's per-tunnel maximum with GCMAES256) with the rate reached. Every
# figure is printed with its ratio to strongSwan (same suite) and to the plain link.
#   hgw-ss-gcm - hybridgw on gw-a (initiator) to strongSwan on gw-b (kernel-libipsec, as an
#              Azure-like peer), AES-256-GCM: compare with ss-gcm (strongSwan to strongSwan)
#
# Topology (built fresh per variant, removed afterwards; namespace names carry this PID):
#   host-a 198.18.1.10 -- 198.18.1.1 gw-a 192.0.2.1 == 192.0.2.2 gw-b 198.19.1.1 -- 198.19.1.10 host-b
# iperf3 and ping run on the hosts; the gateways forward. All four namespaces share the
# machine's cores.
#
# Usage (as root, from the repository root):  benches/tunnel/run.sh
# Environment: DURATION (s per TCP run, default 10), RUNS (median of, default 3),
#   VARIANTS (default "plain hgw-gcm hgw-cbc ss-gcm ss-cbc dp-gcm"), WORKERS (dp-* workers,
#   default 1), UDP_DURATION (s per UDP step, default 3), UDP_STEPS (default 7),
#   PINGS (default 200), RATE (default 2.3G), SOCKET_BUFFER_KB / TUN_QUEUE_LEN set the hybridgw
#   rows' `[dataplane] socket_buffer_kb` / `tun_queue_len` (defaults 8192 / 2048), CPU_AFFINITY=true runs the hybridgw rows with `[dataplane] cpu_affinity`
#   (CPU-local steering while traffic is light; default false, as the appliance's default),
#   KEEP=1 keeps the temporary directory (logs, configs), DP_BIN / HGW_BIN
#   run these manual_tunnel / hybridgw binaries instead of building them (to compare two builds).
set -euo pipefail

DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-1}
UDP_DURATION=${UDP_DURATION:-3}
UDP_STEPS=${UDP_STEPS:-7}
PINGS=${PINGS:-200}
RATE=${RATE:-2.3G}
export RATE
VARIANTS=${VARIANTS:-"plain hgw-gcm hgw-cbc ss-gcm ss-cbc dp-gcm"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/tunnel-bench.XXXXXX)
HA="tb-ha-$$"
GA="tb-ga-$$"
GB="tb-gb-$$"
HB="tb-hb-$$"
NSS=("$HA" "$GA" "$GB" "$HB")
PIDS=()
# Inner IPv4 packet of 1400 bytes: 20 (IP) + 8 (UDP) + 1372 of iperf3 payload.
UDP_LEN=1372

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for t in ip iperf3 ping charon-systemd swanctl python3; do
    command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done

stop_pids() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    PIDS=()
}
teardown() {
    stop_pids
    for n in "${NSS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
}
cleanup() {
    teardown
    [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT INT TERM

needs() { case " $VARIANTS " in *" $1"*) return 0 ;; *) return 1 ;; esac; }
echo "building (release)..." >&2
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if needs dp- && [ -z "${DP_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p dataplane --example manual_tunnel)
fi
if needs hgw- && [ -z "${HGW_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p hybridgw --bin hybridgw)
fi
DP=${DP_BIN:-"$TARGET_DIR/release/examples/manual_tunnel"}
HGW=${HGW_BIN:-"$TARGET_DIR/release/hybridgw"}
PSK="lab-only-psk-not-secret-0123456789"
printf '%s' "$PSK" >"$W/psk"
chmod 600 "$W/psk"

setup_ns() {
    for n in "${NSS[@]}"; do
        ip netns add "$n"
        ip -n "$n" link set lo up
        # Keep IPv6 chatter out of the tunnels.
        ip netns exec "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    done
    ip link add tbla netns "$HA" type veth peer name tbla-gw netns "$GA"
    ip link add tbwa netns "$GA" type veth peer name tbwb netns "$GB"
    ip link add tblb netns "$HB" type veth peer name tblb-gw netns "$GB"
    ip -n "$HA" addr add 198.18.1.10/24 dev tbla
    ip -n "$GA" addr add 198.18.1.1/24 dev tbla-gw
    ip -n "$GA" addr add 192.0.2.1/24 dev tbwa
    ip -n "$GB" addr add 192.0.2.2/24 dev tbwb
    ip -n "$GB" addr add 198.19.1.1/24 dev tblb-gw
    ip -n "$HB" addr add 198.19.1.10/24 dev tblb
    ip -n "$HA" link set tbla up
    ip -n "$GA" link set tbla-gw up
    ip -n "$GA" link set tbwa up
    ip -n "$GB" link set tbwb up
    ip -n "$GB" link set tblb-gw up
    ip -n "$HB" link set tblb up
    ip -n "$HA" route add default via 198.18.1.1
    ip -n "$HB" route add default via 198.19.1.1
    ip netns exec "$GA" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$GB" sysctl -qw net.ipv4.ip_forward=1
}

# Each start_* sets GW_PIDS (the gateway processes whose CPU time is measured).
start_plain() {
    ip -n "$GA" route add 198.19.1.0/24 via 192.0.2.2
    ip -n "$GB" route add 198.18.1.0/24 via 192.0.2.1
    GW_PIDS=""
}

start_dp() { # suite
    ip netns exec "$GA" "$DP" --bind 192.0.2.1:4500 --peer 192.0.2.2:4500 --tun tbtun0 --suite "$1" \
        --spi-out 0x1001 --spi-in 0x2001 --workers "$WORKERS" >"$W/dp-a.log" 2>&1 &
    PIDS+=($!); local pa=$!
    ip netns exec "$GB" "$DP" --bind 192.0.2.2:4500 --peer 192.0.2.1:4500 --tun tbtun0 --suite "$1" \
        --spi-out 0x2001 --spi-in 0x1001 --workers "$WORKERS" >"$W/dp-b.log" 2>&1 &
    PIDS+=($!); local pb=$!
    for _ in $(seq 50); do grep -q ready "$W/dp-a.log" 2>/dev/null && grep -q ready "$W/dp-b.log" 2>/dev/null && break; sleep 0.1; done
    ip -n "$GA" route add 198.19.1.0/24 dev tbtun0
    ip -n "$GB" route add 198.18.1.0/24 dev tbtun0
    GW_PIDS="$pa $pb"
}

start_hgw() { # esp proposal
    hgw_conf() { # local remote remote_prefix behaviour [local_id remote_id]
        cat <<CONF
# Written by benches/tunnel/run.sh: one route-based connection, IKEv2 PSK.
[[connection]]
name = "bench"
local_address = "$1"
remote_address = "$2"
local_id = "${5:-$1}"
remote_id = "${6:-$2}"
psk_file = "$W/psk"
behaviour = "$4"
ike_proposals = "aes256-sha256-modp2048"
esp_proposals = "$ESP"
tun_name = "hgwbench0"
remote_prefixes = ["$3:100"]

[dataplane]
cpu_affinity = ${CPU_AFFINITY:-false}
socket_buffer_kb = ${SOCKET_BUFFER_KB:-8192}
tun_queue_len = ${TUN_QUEUE_LEN:-2048}
CONF
    }
    ESP=$1
    hgw_conf 192.0.2.1 192.0.2.2 198.19.1.0/24 initiate >"$W/hgw-a.toml"
    hgw_conf 192.0.2.2 192.0.2.1 198.18.1.0/24 respond >"$W/hgw-b.toml"
    chmod 600 "$W/hgw-a.toml" "$W/hgw-b.toml"
    rm -f "$W/hgw-a.sock" "$W/hgw-b.sock"
    # Responder first, so the initiator's first IKE_SA_INIT finds it listening.
    ip netns exec "$GB" "$HGW" --socket "$W/hgw-b.sock" run --config "$W/hgw-b.toml" >"$W/hgw-b.log" 2>&1 &
    PIDS+=($!); local pb=$!
    for _ in $(seq 100); do "$HGW" --socket "$W/hgw-b.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
    ip netns exec "$GA" "$HGW" --socket "$W/hgw-a.sock" run --config "$W/hgw-a.toml" >"$W/hgw-a.log" 2>&1 &
    PIDS+=($!); local pa=$!
    local up=""
    for _ in $(seq 150); do
        if "$HGW" --socket "$W/hgw-a.sock" status --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if all(c.get("child_sas") and all(r.get("installed") for r in c.get("routes", [])) for c in s["connections"]) else 1)' 2>/dev/null \
            && "$HGW" --socket "$W/hgw-b.sock" status --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if all(c.get("child_sas") and all(r.get("installed") for r in c.get("routes", [])) for c in s["connections"]) else 1)' 2>/dev/null; then
            up=1; break
        fi
        sleep 0.2
    done
    [ -n "$up" ] || echo "hybridgw: Child SA not established in 30 s (logs in $W)" >&2
    GW_PIDS="$pa $pb"
}

ss_conf() { # side
        local side=$1
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
}

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
                      secret = "$PSK" } }
CONF
}

start_ss_side() { # side esp: one charon on gw-a or gw-b, configuration loaded; sets SS_PID
    local side=$1 ns
    ESP=$2
    ss_conf "$side"
    if [ "$side" = a ]; then
        ns=$GA
        sw 192.0.2.1 192.0.2.2 a.example b.example 198.18.1.0/24 198.19.1.0/24 >"$W/a-swanctl.conf"
    else
        ns=$GB
        sw 192.0.2.2 192.0.2.1 b.example a.example 198.19.1.0/24 198.18.1.0/24 >"$W/b-swanctl.conf"
    fi
    rm -f "$W/$side.vici"
    STRONGSWAN_CONF="$W/$side.conf" ip netns exec "$ns" charon-systemd >"$W/charon-$side.out" 2>&1 &
    PIDS+=($!); SS_PID=$!
    for _ in $(seq 100); do [ -S "$W/$side.vici" ] && break; sleep 0.1; done
    swanctl --load-all --uri "unix://$W/$side.vici" --file "$W/$side-swanctl.conf" >>"$W/swanctl.log" 2>&1
}

start_ss() { # esp proposal
    start_ss_side a "$1"; local pa=$SS_PID
    start_ss_side b "$1"; local pb=$SS_PID
    swanctl --initiate --uri "unix://$W/a.vici" --child t --timeout 10 >>"$W/swanctl.log" 2>&1 \
        || echo "strongSwan: initiate failed (logs in $W)" >&2
    GW_PIDS="$pa $pb"
}

start_mixed() { # esp proposal: hybridgw on gw-a (initiator), strongSwan on gw-b (responder)
    start_ss_side b "$1"
    ESP=$1
    hgw_conf 192.0.2.1 192.0.2.2 198.19.1.0/24 initiate a.example b.example >"$W/hgw-a.toml"
    chmod 600 "$W/hgw-a.toml"
    rm -f "$W/hgw-a.sock"
    ip netns exec "$GA" "$HGW" --socket "$W/hgw-a.sock" run --config "$W/hgw-a.toml" >"$W/hgw-a.log" 2>&1 &
    PIDS+=($!); local pa=$!
    local up=""
    for _ in $(seq 150); do
        if "$HGW" --socket "$W/hgw-a.sock" status --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if all(c.get("child_sas") and all(r.get("installed") for r in c.get("routes", [])) for c in s["connections"]) else 1)' 2>/dev/null; then
            up=1; break
        fi
        sleep 0.2
    done
    [ -n "$up" ] || echo "hybridgw -> strongSwan: Child SA not established in 30 s (logs in $W)" >&2
    # kernel-libipsec routes the remote selector into ipsec0 itself.
    GW_PIDS="$pa $SS_PID"
}

cpu_ticks() { # sum of utime+stime of GW_PIDS (all threads)
    local t=0
    for p in $GW_PIDS; do
        # The gateways are the direct children of `ip netns exec` (exec'd).
        [ -r "/proc/$p/stat" ] || continue
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

iperf_server() {
    ip netns exec "$HB" iperf3 -s -1 -B 198.19.1.10 >/dev/null 2>&1 &
    SRV=$!
    for _ in $(seq 30); do
        ip netns exec "$HB" ss -ltn 2>/dev/null | grep -q ':5201 ' && return
        sleep 0.1
    done
}

iperf_tcp() { # streams -> prints "gbps gbytes"
    iperf_server
    ip netns exec "$HA" iperf3 -c 198.19.1.10 -t "$DURATION" -P "$1" -J >"$W/iperf.json" 2>/dev/null || true
    wait "$SRV" 2>/dev/null || true
    python3 - "$W/iperf.json" <<'PY'
import json, sys
try:
    e = json.load(open(sys.argv[1]))["end"]["sum_received"]
    print(f'{e["bits_per_second"]/1e9:.3f} {e["bytes"]/1e9:.4f}')
except Exception:
    print("nan 0")
PY
}

iperf_udp() { # offered bit/s (0 = unlimited) -> prints "sent_bps received_pps loss_percent"
    iperf_server
    ip netns exec "$HA" iperf3 -c 198.19.1.10 -u -w 4M -l "$UDP_LEN" -b "$1" -t "$UDP_DURATION" -J >"$W/udp.json" 2>/dev/null || true
    wait "$SRV" 2>/dev/null || true
    python3 - "$W/udp.json" "$UDP_DURATION" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
    e = j["end"]
    s = e["sum_sent"] if "sum_sent" in e else e["sum"]
    r = e["sum_received"] if "sum_received" in e else e["sum"]
    pkts = r.get("packets", s.get("packets", 0))
    lost = r.get("lost_packets", 0)
    secs = r.get("seconds") or float(sys.argv[2])
    print(f'{s["bits_per_second"]:.0f} {(pkts - lost) / secs:.0f} {r.get("lost_percent", 100.0):.4f}')
except Exception:
    print("0 0 100")
PY
}

# Highest offered rate whose loss stays <= 0.1 %: one unlimited run gives the ceiling (what the
# sender manages) and a first guess (what got through); then bisection between the best good
# and the lowest bad rate, UDP_STEPS runs in all. Prints the received packets/s at that rate.
udp_search() {
    local r sent pps loss lo=0 hi best=0 rate step
    r=$(iperf_udp 0); read -r sent pps loss <<<"$r"
    echo "  udp unlimited: sent $sent bit/s, got $pps pkt/s, loss $loss %" >&2
    if python3 -c "import sys; sys.exit(0 if $loss <= 0.1 else 1)"; then echo "$pps"; return; fi
    [ "$pps" != 0 ] || { echo nan; return; }
    hi=$sent
    # First guess: 95 % of what came through.
    rate=$(python3 -c "print(int($pps * 0.95 * $UDP_LEN * 8))")
    for step in $(seq 2 "$UDP_STEPS"); do
        r=$(iperf_udp "$rate"); read -r sent pps loss <<<"$r"
        echo "  udp step $step: offered $rate bit/s, got $pps pkt/s, loss $loss %" >&2
        if python3 -c "import sys; sys.exit(0 if $loss <= 0.1 else 1)"; then
            lo=$rate
            python3 -c "import sys; sys.exit(0 if $pps > $best else 1)" && best=$pps
        else
            hi=$rate
        fi
        rate=$(python3 -c "print(int(($lo + $hi) / 2))")
    done
    if [ "$best" = 0 ]; then echo nan; else echo "$best"; fi
}

# Ping RTT while one TCP stream fills the tunnel (what users feel): iperf3 for DURATION s, 20 ms
# pings from its second second to one second before its end.
ping_under_load() { # -> prints "median p99"
    iperf_server
    ip netns exec "$HA" iperf3 -c 198.19.1.10 -t "$DURATION" -P 1 >/dev/null 2>&1 &
    local ip=$!
    sleep 1
    local n=$(( (DURATION - 2) * 50 ))
    [ "$n" -ge 20 ] || n=20
    ping_stats "$n" 0.02
    wait "$ip" 2>/dev/null || true
    wait "$SRV" 2>/dev/null || true
}

# Gateway CPU while iperf3 sends TCP at RATE (Azure's per-tunnel maximum with GCMAES256, 2.3
# Gbit/s): prints "cores_busy achieved_gbps" (cores: CPU seconds per second of both gateways).
cpu_at_rate() {
    local hz c0 c1 t0 t1 r
    hz=$(getconf CLK_TCK)
    iperf_server
    c0=$(cpu_ticks); t0=$(date +%s.%N)
    ip netns exec "$HA" iperf3 -c 198.19.1.10 -t "$DURATION" -b "$RATE" -J >"$W/rate.json" 2>/dev/null || true
    c1=$(cpu_ticks); t1=$(date +%s.%N)
    wait "$SRV" 2>/dev/null || true
    r=$(python3 - "$W/rate.json" <<'PY'
import json, sys
try:
    print(f'{json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9:.3f}')
except Exception:
    print("nan")
PY
)
    echo "$(python3 -c "print(($c1-$c0)/$hz/($t1-$t0))") $r"
}

ping_stats() { # count interval -> prints "median p99"
    ip netns exec "$HA" ping -c "$1" -i "$2" -W 1 198.19.1.10 2>/dev/null | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' \
        | sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan nan"; exit}
            m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2
            i = int(NR*0.99); if (i<1) i=1; print m, a[i]}'
}

measure() { # variant -> writes results to $W/res-$variant
    local v=$1 single=() multi=() cpu=() hz
    hz=$(getconf CLK_TCK)
    for _ in $(seq "$RUNS"); do
        local c0 c1 r gb
        c0=$(cpu_ticks)
        r=$(iperf_tcp 1)
        c1=$(cpu_ticks)
        single+=("${r% *}")
        gb=${r#* }
        if [ -n "$GW_PIDS" ] && [ "$gb" != 0 ]; then
            cpu+=("$(python3 -c "print(($c1-$c0)/$hz/$gb)")")
        fi
        r=$(iperf_tcp 4)
        multi+=("${r% *}")
    done
    local udp rtt rtt_fast
    udp=$(udp_search)
    rtt=$(ping_stats "$PINGS" 0.02)
    rtt_fast=$(ping_stats 1000 0.001)
    local loaded at_rate
    loaded=$(ping_under_load)
    at_rate="nan nan"
    if [ -n "$GW_PIDS" ]; then at_rate=$(cpu_at_rate); fi
    {
        echo "rttload ${loaded% *}"
        echo "rttload99 ${loaded#* }"
        echo "cpurate ${at_rate% *}"
        echo "rate ${at_rate#* }"
        echo "single $(printf '%s\n' "${single[@]}" | median)"
        echo "multi $(printf '%s\n' "${multi[@]}" | median)"
        echo "udp $(python3 -c "print(float('$udp') / 1000)")"
        echo "rtt ${rtt% *}"
        echo "rtt99 ${rtt#* }"
        echo "rttfast ${rtt_fast% *}"
        if [ ${#cpu[@]} -gt 0 ]; then echo "cpu $(printf '%s\n' "${cpu[@]}" | median)"; else echo "cpu nan"; fi
    } >"$W/res-$v"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for v in $VARIANTS; do
    echo "== $v" >&2
    setup_ns
    case $v in
        plain) start_plain ;;
        hgw-gcm) start_hgw aes256gcm16 ;;
        hgw-cbc) start_hgw aes256-sha256 ;;
        ss-gcm) start_ss aes256gcm16 ;;
        ss-cbc) start_ss aes256-sha256 ;;
        hgw-ss-gcm) start_mixed aes256gcm16 ;;
        dp-gcm) start_dp gcm ;;
        dp-cbc) start_dp cbc ;;
        *) echo "unknown variant $v" >&2; exit 1 ;;
    esac
    if ! ip netns exec "$HA" ping -c 2 -i 0.2 -W 2 198.19.1.10 >/dev/null; then
        echo "$v: no connectivity host-a -> host-b (logs in $W, KEEP=1 keeps them)" >&2
        teardown
        continue
    fi
    measure "$v"
    cat "$W/res-$v" >&2
    teardown
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$W" $VARIANTS <<'PY'
import sys, pathlib, math
w = pathlib.Path(sys.argv[1]); variants = sys.argv[2:]
res = {}
for v in variants:
    p = w / f"res-{v}"
    if p.exists():
        res[v] = {k: float(x) for k, x in (l.split() for l in p.read_text().splitlines())}
rate_label = (__import__("os").environ.get("RATE") or "2.3G") + "bit/s offered"
def ratio(a, b):
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return "  -  "
    return f"{a/b:5.2f}x"
ref = {"hgw-gcm": "ss-gcm", "hgw-cbc": "ss-cbc", "dp-gcm": "ss-gcm", "dp-cbc": "ss-cbc",
       "ss-gcm": "ss-gcm", "ss-cbc": "ss-cbc", "hgw-ss-gcm": "ss-gcm"}
rows = [("single", "TCP 1 stream Gbit/s"), ("multi", "TCP 4 streams Gbit/s"),
        ("udp", "UDP 1400 B kpkt/s at <= 0.1 % loss"), ("rtt", "ping RTT median ms (20 ms apart)"),
        ("rtt99", "ping RTT p99 ms (20 ms apart)"), ("rttfast", "ping RTT median ms (1 ms apart)"),
        ("rttload", "ping RTT median ms under 1 TCP stream"), ("rttload99", "ping RTT p99 ms under 1 TCP stream"),
        ("cpu", "gateway CPU s/GB"), ("cpurate", f"gateway CPU cores at {rate_label}"),
        ("rate", f"TCP Gbit/s reached at {rate_label}")]
print("| variant | metric | value | vs strongSwan (same suite) | vs plain link |")
print("|---|---|---|---|---|")
for v in variants:
    if v not in res:
        print(f"| {v} | (no result) | | | |"); continue
    for k, name in rows:
        val = res[v].get(k)
        if val is None or (k in ("cpu", "cpurate", "rate") and v == "plain"):
            continue
        s = res.get(ref.get(v, ""), {}).get(k)
        pl = res.get("plain", {}).get(k)
        print(f"| {v} | {name} | {val:.3f} | {ratio(val, s) if v in ref else '  -  '} | {ratio(val, pl) if k not in ('cpu', 'cpurate', 'rate') else '  -  '} |")
PY
