#!/bin/sh
# Seed corpora for the NAT fuzz targets from every rule set in tests/fixtures and
# ../shared/nat-fixtures: iptables-save files for nat_iptables, .nft text for nat_nft_text, and
# for nat_nft_json what a real nft prints with -j after loading each .nft file (in a throwaway
# namespace, removed on exit). Needs root for the namespace. Usage: fuzz/seed-nat.sh
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/nat_iptables corpus/nat_nft_text corpus/nat_nft_json
ns=nt-test-fuzzseed-$$
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
for f in ../tests/fixtures/* ../tests/fixtures/nat/* ../../shared/nat-fixtures/* /work/shared/nat-fixtures/*; do
    [ -f "$f" ] || continue
    b=$(basename "$f")
    case "$b" in
    *.nft)
        cp "$f" "corpus/nat_nft_text/$b"
        ip netns exec "$ns" nft flush ruleset
        # An older nft refuses 'priority dstnat' on the output hook: the same number then.
        sed 's/hook output priority dstnat/hook output priority -100/' "$f" >"corpus/.load.nft"
        if ip netns exec "$ns" nft -f corpus/.load.nft 2>/dev/null; then
            ip netns exec "$ns" nft -j list ruleset >"corpus/nat_nft_json/$b.json"
        fi
        ;;
    *.json) cp "$f" "corpus/nat_nft_json/$b" ;;
    *.md) ;;
    *) cp "$f" "corpus/nat_iptables/$b" ;;
    esac
done
rm -f corpus/.load.nft
ls corpus/nat_iptables corpus/nat_nft_text corpus/nat_nft_json | grep -c . || true
