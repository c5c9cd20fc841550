#!/usr/bin/env bash
# Records ESP-in-UDP packets sealed by strongSwan (kernel-libipsec) between two charon
# instances in network namespaces, plus the Child SA keys charon logs, into this directory:
#   strongswan.pcap  the capture (Ethernet, UDP port 4500: IKE after the NAT-T switch and ESP)
#   strongswan-keys.txt  one line per ESP SA: src dst spi cipher enc_key integrity integ_key
# Lab keys only. Needs root, strongSwan (charon-systemd, swanctl, kernel-libipsec), tcpdump.
# Uses only 192.0.2.0/24 (underlay) and 198.18.0.0/15 (protected networks).
set -euo pipefail

OUT=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/esp-record.XXXXXX)
A="esprec-a-$$"
B="esprec-b-$$"
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT

ip netns add "$A"
ip netns add "$B"
ip link add va netns "$A" type veth peer name vb netns "$B"
ip -n "$A" link set lo up
ip -n "$B" link set lo up
ip -n "$A" addr add 192.0.2.1/24 dev va
ip -n "$B" addr add 192.0.2.2/24 dev vb
ip -n "$A" link set va up
ip -n "$B" link set vb up
# The protected hosts are addresses on loopback (this kernel has no dummy links).
ip -n "$A" addr add 198.18.0.1/32 dev lo
ip -n "$A" addr add 198.18.1.1/32 dev lo
ip -n "$B" addr add 198.19.0.1/32 dev lo
ip -n "$B" addr add 198.19.1.1/32 dev lo

for side in a b; do
    cat >"$W/$side.conf" <<CONF
charon {
    load = random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 pubkey x509 kernel-libipsec kernel-netlink socket-default vici updown
    routing_table_prio = 32767
    plugins {
        vici { socket = unix://$W/$side.vici }
        kernel-libipsec { load = yes }
    }
    filelog {
        $side {
            path = $W/$side.log
            default = 1
            chd = 4
            append = no
            flush_line = yes
        }
    }
    syslog { daemon { default = -1 } }
    journal { default = -1 }
}
CONF
done

swanctl_conf() { # local remote local_id remote_id local_net_prefix remote_net_prefix
    cat <<CONF
connections {
    rec {
        version = 2
        local_addrs = $1
        remote_addrs = $2
        encap = yes
        proposals = aes256-sha256-modp2048
        local { auth = psk
                id = $3 }
        remote { auth = psk
                 id = $4 }
        children {
            gcm { local_ts = ${5}.0.0/24
                  remote_ts = ${6}.0.0/24
                  esp_proposals = aes256gcm16 }
            cbc { local_ts = ${5}.1.0/24
                  remote_ts = ${6}.1.0/24
                  esp_proposals = aes256-sha256 }
        }
    }
}
secrets {
    ike-lab { id-a = a.example
              id-b = b.example
              secret = "lab-only-psk-not-secret-0123456789" }
}
CONF
}
swanctl_conf 192.0.2.1 192.0.2.2 a.example b.example 198.18 198.19 >"$W/a-swanctl.conf"
swanctl_conf 192.0.2.2 192.0.2.1 b.example a.example 198.19 198.18 >"$W/b-swanctl.conf"

STRONGSWAN_CONF="$W/a.conf" ip netns exec "$A" charon-systemd &
PIDS+=($!)
STRONGSWAN_CONF="$W/b.conf" ip netns exec "$B" charon-systemd &
PIDS+=($!)
for side in a b; do
    for _ in $(seq 50); do [ -S "$W/$side.vici" ] && break; sleep 0.1; done
    swanctl --load-all --uri "unix://$W/$side.vici" --file "$W/$side-swanctl.conf" >/dev/null
done

ip netns exec "$A" tcpdump -i va -U -w "$W/cap.pcap" udp port 4500 2>/dev/null &
PIDS+=($!)
sleep 1
swanctl --initiate --uri "unix://$W/a.vici" --child gcm --timeout 10 >/dev/null
swanctl --initiate --uri "unix://$W/a.vici" --child cbc --timeout 10 >/dev/null
sleep 1
ip netns exec "$A" ping -c 3 -i 0.2 -W 2 -s 56 -I 198.18.0.1 198.19.0.1 >/dev/null
ip netns exec "$A" ping -c 3 -i 0.2 -W 2 -s 1000 -I 198.18.1.1 198.19.1.1 >/dev/null
sleep 1
swanctl --list-sas --uri "unix://$W/a.vici" --raw >"$W/sas.txt"
kill -INT "${PIDS[2]}"
wait "${PIDS[2]}" 2>/dev/null || true

python3 - "$W" "$OUT" <<'PY'
import re, sys, pathlib
w, out = map(pathlib.Path, sys.argv[1:])
log = (w / "a.log").read_text()
sas = (w / "sas.txt").read_text()
# Keys: "encryption initiator key => N bytes @ ..." followed by hexdump lines "  0: AA BB ...".
keys = {}
lines = log.splitlines()
for i, l in enumerate(lines):
    m = re.search(r"(encryption|integrity) (initiator|responder) key => (\d+) bytes", l)
    if not m:
        continue
    n = int(m.group(3)); hexs = ""
    for l2 in lines[i + 1:]:
        m2 = re.search(r"\s\d+: ((?:[0-9A-F]{2} ){1,16})", l2 + " ")
        if not m2 or len(hexs) >= 2 * n:
            break
        hexs += m2.group(1).replace(" ", "")
    keys.setdefault(m.group(2), []).append((m.group(1), hexs[: 2 * n].lower()))
print(keys.keys(), file=sys.stderr)
# Children in creation order: gcm then cbc. Each child logs initiator/responder enc (+integ).
rows = []
for name in ("gcm", "cbc"):
    m = re.search(r"\b" + name + r"-\d+ \{[^}]*?spi-in=([0-9a-f]+) spi-out=([0-9a-f]+)", sas)
    rows.append((name, m.group(1), m.group(2)))
ini = keys["initiator"]; res = keys["responder"]
def take(lst):
    enc = lst.pop(0)
    integ = lst.pop(0) if lst and lst[0][0] == "integrity" else ("integrity", "")
    return enc[1], integ[1]
with open(out / "strongswan-keys.txt", "w") as f:
    f.write("# src dst spi cipher enc_key integrity integ_key (recorded by record-strongswan.sh)\n")
    for name, spi_in, spi_out in rows:
        ie, ii = take(ini); re_, ri = take(res)
        cipher, integ = ("aes256gcm16", "none") if name == "gcm" else ("aes256", "sha256")
        # The initiator (192.0.2.1) sends with the initiator keys to the responder's SPI.
        f.write(f"192.0.2.1 192.0.2.2 0x{spi_out} {cipher} {ie} {integ} {ii or '-'}\n")
        f.write(f"192.0.2.2 192.0.2.1 0x{spi_in} {cipher} {re_} {integ} {ri or '-'}\n")
PY
cp "$W/cap.pcap" "$OUT/strongswan.pcap"
echo "recorded: $OUT/strongswan.pcap $OUT/strongswan-keys.txt"
