#!/usr/bin/env python3
"""Writes the small committed seed corpora under fuzz/seeds/<target>/ (run from fuzz/).

config:       the shipped appliance-config/*.toml examples.
inner_packet: a control byte + hand-built IPv4/IPv6 packets (TCP SYN with aligned and unaligned
              MSS options, DF UDP, an IPv6 fragment header, an ICMP echo).
ike_endpoint: operation scripts (see fuzz_targets/ike_endpoint.rs): complete wrong-PSK
              handshakes against R and I, with drops, duplicates and time steps; replays of the
              recorded genuine handshake; raw IKE_SA_INIT requests from the ike_message corpus.
              (seeds/ike_endpoint/cookie-echo-min is not generated: it is the minimized input
              of the cookie-echo finding, kept by hand.)
"""
import glob, os, shutil, struct

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def ipv4(proto, payload, df=True, frag=0, src=bytes([198,18,0,10]), dst=bytes([198,19,0,20])):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, (0x4000 if df else 0) | frag, 64, proto, 0, src, dst)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload

def ipv6(nh, payload, src=bytes(15) + b"\x0a", dst=bytes(15) + b"\x14"):
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, src, dst) + payload

def tcp_syn(opts, data=b""):
    off = (20 + len(opts)) // 4
    return struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, off << 4, 0x02, 65535, 0, 0) + opts + data

def write(target, name, data):
    d = os.path.join("seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# config
for p in sorted(glob.glob("../appliance-config/*.toml")):
    os.makedirs("seeds/config", exist_ok=True)
    shutil.copy(p, os.path.join("seeds", "config", os.path.basename(p)))

# inner_packet: control byte 0x84 = MSS limit 1350 (index 4), fix checksum, MTU 1400 (index 5)
mss1460 = b"\x02\x04\x05\xb4"
write("inner_packet", "v4-syn-mss", bytes([0x85]) + ipv4(6, tcp_syn(mss1460 + b"\x01\x01\x04\x02")))
write("inner_packet", "v4-syn-mss-unaligned", bytes([0x85]) + ipv4(6, tcp_syn(b"\x01" + mss1460 + b"\x01\x01\x00")))
write("inner_packet", "v6-syn-mss", bytes([0x95]) + ipv6(6, tcp_syn(b"\x01\x01" + mss1460 + b"\x01\x01")))
write("inner_packet", "v4-udp-df", bytes([0x0d]) + ipv4(17, struct.pack("!HHHH", 5000, 53, 208, 0) + bytes(200)))
write("inner_packet", "v6-frag-udp", bytes([0x04]) + ipv6(44, struct.pack("!BBHI", 17, 0, 0x0001, 7) + struct.pack("!HHHH", 5000, 53, 108, 0) + bytes(100)))
write("inner_packet", "v4-icmp-echo", bytes([0x03]) + ipv4(1, b"\x08\x00\xf7\xff\x00\x00\x00\x00" + bytes(56)))

# ike_endpoint: op scripts
write("ike_endpoint", "r-wrong-psk", bytes([2, 3] + [2] * 8 + [3] * 4 + [7, 8, 2, 3, 7, 200, 7, 200]))
write("ike_endpoint", "i-wrong-psk", bytes([5, 4] + [5] * 8 + [4] * 4 + [7, 8, 5, 4, 7, 200, 7, 200]))
write("ike_endpoint", "r-drop-dup-rebind", bytes([2, 3, 0x12, 0x22, 2, 0x42, 2, 7, 4, 2, 2, 3, 3, 3, 7, 120]))
write("ike_endpoint", "i-retransmit", bytes([7, 4, 7, 8, 7, 16, 5, 4, 0x25, 7, 20, 5, 4, 4, 4, 7, 255, 7, 255]))
write("ike_endpoint", "replay-genuine", bytes(b for i in range(12) for b in (6 | 0x10, i, 0, 0)) + bytes([7, 40]))
write("ike_endpoint", "replay-genuine-to-i", bytes(b for i in range(12) for b in (6 | 0x18, i, 0, 0)) + bytes([7, 40]))
write("ike_endpoint", "r-cookie-flood", bytes(b for i in range(8) for b in (6 | 0x20, 0, 8 + i * 7, 0x11)) + bytes([2, 3, 7, 140, 2]))
inits = []
for p in sorted(glob.glob("corpus/ike_message/*")):
    b = open(p, "rb").read()
    if len(b) > 29 and b[0] & 3 == 0 and b[19] == 34 and not b[20] & 0x20 and len(b) < 4096:
        inits.append(b[1:])
    if len(inits) == 4:
        break
script = b""
for body in inits:
    script += bytes([0 | ((len(body) >> 8) << 4), len(body) & 0xff]) + body
if script:
    write("ike_endpoint", "raw-inits", script + bytes([7, 200]))
