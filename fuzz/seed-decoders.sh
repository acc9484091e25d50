#!/bin/sh
# Seed corpora for the decoder fuzz targets with what real peers send:
# - l7_decoders: the bytes curl, openssl s_client (SNI + ALPN), dig +tcp and a RESP client send,
#   caught by socat in a throwaway namespace (removed on exit), and the TCP payloads of the
#   committed captures; each with a few read sizes (the first byte of an input picks it);
# - dns_packet: every frame of the committed captures, as Ethernet and as raw IP (the first byte
#   picks the link kind);
# - lab_spec: every lab file of the repository.
# Needs root for the namespace. Usage: fuzz/seed-decoders.sh
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/l7_decoders corpus/dns_packet corpus/lab_spec
cp ../src/lab/default.toml corpus/lab_spec/src-default.toml
for f in ../docs/labs/*.toml; do cp "$f" "corpus/lab_spec/docs-$(basename "$f")"; done

ns=nt-test-fuzzseed-$$
tmp=$(mktemp -d)
ip netns add "$ns"
trap 'ip netns del "$ns"; rm -rf "$tmp"' EXIT
ip -n "$ns" link set lo up
# One listener per client: socat writes what it receives to a file and answers nothing.
catch() { # NAME PORT CLIENT...
    name=$1 port=$2
    shift 2
    ip netns exec "$ns" socat -u "TCP-LISTEN:$port,reuseaddr" "OPEN:$tmp/$name,creat,trunc" &
    sleep 0.3
    ip netns exec "$ns" timeout 3 "$@" >/dev/null 2>&1 </dev/null || true
    wait
}
catch http 7001 curl -s -m 2 -H 'Transfer-Encoding: chunked' -d 'hello' http://127.0.0.1:7001/x
catch tls 7002 openssl s_client -connect 127.0.0.1:7002 -servername shop.example.test -alpn h2,http/1.1
catch dns 7003 dig +tcp +tries=1 +time=1 -p 7003 @127.0.0.1 example.test AAAA
catch resp 7004 sh -c 'printf "*3\r\n\$3\r\nSET\r\n\$5\r\nmykey\r\n\$7\r\nmyvalue\r\n" | socat -t1 - TCP:127.0.0.1:7004'

python3 - "$tmp" ../captures/*.pcapng <<'EOF'
import os, struct, subprocess, sys
tmp, caps = sys.argv[1], sys.argv[2:]
def put(d, name, data):
    with open(os.path.join("corpus", d, name), "wb") as f:
        f.write(data)
for name in sorted(os.listdir(tmp)):
    data = open(os.path.join(tmp, name), "rb").read()
    if data:
        for cut in (1, 7, 255):
            put("l7_decoders", f"client-{name}-{cut}", bytes([cut]) + data)
for cap in caps:
    pcap = os.path.join(tmp, os.path.basename(cap) + ".pcap")
    subprocess.run(["tshark", "-r", cap, "-F", "pcap", "-w", pcap], check=True,
                   stderr=subprocess.DEVNULL)
    raw = open(pcap, "rb").read()
    assert struct.unpack("<I", raw[20:24])[0] == 1, "Ethernet captures only"
    off, n = 24, 0
    while off + 16 <= len(raw):
        incl = struct.unpack("<I", raw[off + 8:off + 12])[0]
        frame = raw[off + 16:off + 16 + incl]
        off += 16 + incl
        n += 1
        base = os.path.basename(cap).replace(".pcapng", "")
        put("dns_packet", f"{base}-{n}-eth", b"\x01" + frame)
        put("dns_packet", f"{base}-{n}-ip", b"\x00" + frame[14:])
        # TCP payload for the L7 decoders (IPv4 only here).
        if frame[12:14] == b"\x08\x00" and frame[23] == 6:
            ihl = (frame[14] & 15) * 4
            tcp = 14 + ihl
            payload = frame[tcp + (frame[tcp + 12] >> 4) * 4:]
            if payload:
                put("l7_decoders", f"{base}-{n}", b"\x07" + payload)
EOF
for d in l7_decoders dns_packet lab_spec; do echo "$d: $(ls corpus/$d | wc -l) seeds"; done
