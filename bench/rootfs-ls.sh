#!/usr/bin/env bash
# Benchmark: listing the merged root filesystem of a ~1.3 GB, many-file, two-layer image.
#   cstorage ls -R IMAGE (names; -l; --format json)   vs   umoci unpack + find
# with `find` over the already unpacked tree as the floor. The image's layers are copies of
# /usr/share and /usr/lib/<arch>-linux-gnu (merging under /usr), written by skopeo into a
# store kept in $BENCH_DIR/rootfs-1g (built once). Not a test.
source "$(dirname "$0")/common.sh"
D=$BENCH_DIR/rootfs-1g
ROOT=$D/root; RUN=$D/run; OPT=overlay.skip_mount_home=true
if [ ! -f "$D/.done" ]; then
    rm -rf "$D"; mkdir -p "$D/share/usr" "$D/lib/usr/lib"
    cp -a /usr/share "$D/share/usr/"
    cp -a /usr/lib/$(uname -m)-linux-gnu "$D/lib/usr/lib/"
    echo "building the layout and the store (one-time)" >&2
    scripts/mkoci.py --plain "$D/layout" big "$D/share" "$D/lib" >/dev/null
    skopeo copy -q "oci:$D/layout:big" "containers-storage:[overlay@$ROOT+$RUN:$OPT]localhost/rootfs-big:latest"
    rm -rf "$D/share" "$D/lib"
    touch "$D/.done"
fi
CSTA="$CST --root $ROOT --runroot $RUN --storage-opt $OPT"
IMG=localhost/rootfs-big:latest
BUNDLE=$D/bundle
machine_info
echo "umoci: $(umoci --version)"
# Correctness first: the same paths as umoci's unpacked tree.
rm -rf "$BUNDLE"
umoci unpack --image "$D/layout:big" "$BUNDLE" >/dev/null
$CSTA ls -R "$IMG" | tail -n +2 | LC_ALL=C sort >"$D/ours.txt"
(cd "$BUNDLE/rootfs" && find . -mindepth 1 | cut -c2- | LC_ALL=C sort) >"$D/umoci.txt"
cmp "$D/ours.txt" "$D/umoci.txt"
echo "image: $($CSTA --format json images | python3 -c "import json,sys; print(json.load(sys.stdin)[0][\"size\"])") bytes, $(wc -l <"$D/ours.txt") paths, 2 layers"
echo
echo "== listing the whole tree (ratio = time / cstorage ls -R)"
hyperfine --warmup 1 --runs ${RUNS:-10} --export-json "$D/ls.json" \
    "$CSTA ls -R $IMG >/dev/null" \
    "$CSTA ls -R -l $IMG >/dev/null" \
    "$CSTA --format json ls -R $IMG >/dev/null" \
    "find $BUNDLE/rootfs >/dev/null" \
    "find $BUNDLE/rootfs -printf '%M %U:%G %s %t %p %l\n' >/dev/null" >/dev/null
echo "== umoci unpack + find (ratio = time / the first cstorage ls -R above)"
hyperfine --runs ${UMOCI_RUNS:-3} --export-json "$D/umoci.json" --prepare "rm -rf $BUNDLE" \
    "umoci unpack --image $D/layout:big $BUNDLE >/dev/null && find $BUNDLE/rootfs >/dev/null" >/dev/null
python3 - "$D/ls.json" "$D/umoci.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"] + json.load(open(sys.argv[2]))["results"]
base = r[0]["mean"]
for x in r:
    print(f"  {x['mean']*1000:10.2f} ms ± {x['stddev']*1000:7.2f}   {x['mean']/base:7.2f}x   {x['command']}")
PY
rm -rf "$BUNDLE"
