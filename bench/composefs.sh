#!/usr/bin/env bash
# Benchmark: an image's composefs digest / EROFS image + objects from the store (1.3 GB
# single-layer image of real files copied from /usr, the store of layer-export.sh):
#   cstorage composefs digest            vs  composefs-rs's own containers-storage import
#   cstorage composefs mkfs --digest-store  (composefs-oci 0.9.4, bench/composefs-rs) into an
#   cstorage composefs import --repo (tmpfs)
#                                            empty repository on a tmpfs (both copy; its
#                                            zerocopy mode refuses to copy, so --copy) and on
#                                            the store's file system (zerocopy: hard links)
#   vs  mkcomposefs --print-digest-only on the unpacked tree (the layer's diff directory;
#       C tools of the Debian 13 chroot), and sha256sum of the same bytes (hashing floor).
# Prints ratios, CPU use (user+sys over wall: how the work spreads over the cores) and peak RSS.
# Not a test. Needs root (tmpfs, bind mount, chroot).
source "$(dirname "$0")/common.sh"
use_layer_1g
echo "building composefs-rs's importer (bench/composefs-rs, composefs-oci 0.9.4)" >&2
cargo build --release -q --manifest-path bench/composefs-rs/Cargo.toml
CFSRS=$PWD/bench/composefs-rs/target/release/composefs-rs-import
IMG=localhost/big:latest
L=$($CSTA layers -q | head -n1)
DIFF=$ROOT/overlay/$L/diff
SIZE=$($CSTA --format json layer inspect "$L" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["diff_size"])')
TRIXIE=tests/trixie/trixie-env.sh
CHROOT=${CSTORAGE_TRIXIE_CACHE:-/var/cache/cstorage-trixie}/root
# The unpacked tree (the layer's diff directory) as the chroot sees it.
TREE=/bench-tree
T=$D/tmpfs
mkdir -p "$T" "$CHROOT$TREE"
cleanup() {
    umount "$CHROOT$TREE" 2>/dev/null && rmdir "$CHROOT$TREE" || true
    umount "$T" 2>/dev/null || true
    rm -rf "$D/repo-samefs"
    $TRIXIE teardown >/dev/null 2>&1 || true
}
trap cleanup EXIT
mount -t tmpfs -o size=4g tmpfs "$T"
$TRIXIE mount >/dev/null
mount --bind -o ro "$DIFF" "$CHROOT$TREE"
test "$($TRIXIE run find $TREE -type f | wc -l)" -gt 40000
# Regular files of the layer, for the hashing floor.
$CSTA --format json layer ls "$L" | python3 -c '
import json, sys, os
for e in json.load(sys.stdin):
    if e["entry_type"] == "regular" and e["size"] > 0:
        sys.stdout.write(os.path.normpath(e["path"]) + "\0")' > "$D/files.list"
machine_info
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: a load above 2 slows every command)"
echo "composefs-oci 0.9.4 (crates.io), composefs (C) $($TRIXIE run dpkg-query -W -f='${Version}' composefs 2>/dev/null || echo '?') (Debian 13 chroot)"
echo "image: $IMG, one layer $L, $SIZE bytes, $(tr -cd '\0' < "$D/files.list" | wc -c) regular files"

# Correctness first: composefs-rs's import records the digest we compute.
OURS=$($CSTA composefs digest $IMG)
rm -rf "$T/repo"
THEIRS=$(CONTAINERS_STORAGE_ROOT=$ROOT $CFSRS "$T/repo" "$IMG" --copy)
echo "cstorage composefs digest: $OURS"
echo "composefs-rs import:       $THEIRS"
test "$OURS" = "$THEIRS"
rm -rf "$T/ours"
IMPORTED=$($CSTA composefs import $IMG --repo "$T/ours" 2>/dev/null)
echo "cstorage composefs import: $IMPORTED"
test "$OURS" = "$IMPORTED"
rm -rf "$T/ours"
# (mkcomposefs sees the diff directory as it is on disk, so its digest differs: no OCI
# transforms, the directory's own root metadata.)
echo "mkcomposefs on the tree:   $($TRIXIE run mkcomposefs --min-version=1 --print-digest-only $TREE)"
rm -rf "$T/repo"

json=$D/composefs.json
echo
echo "== warm page cache (ratio = time / cstorage composefs digest)"
hyperfine --warmup 1 --runs ${RUNS:-5} --export-json "$json" \
    --prepare "rm -rf $T/repo $T/objs $T/x.cfs $T/ours $D/repo-samefs" \
    "$CSTA composefs digest $IMG" \
    "$CSTA composefs mkfs $IMG -o $T/x.cfs --digest-store $T/objs" \
    "$CSTA composefs import $IMG --repo $T/ours" \
    "CONTAINERS_STORAGE_ROOT=$ROOT $CFSRS $T/repo $IMG --copy" \
    "CONTAINERS_STORAGE_ROOT=$ROOT $CFSRS $D/repo-samefs $IMG" \
    "$TRIXIE run mkcomposefs --min-version=1 --print-digest-only $TREE" \
    "cd $DIFF && xargs -0 -a $D/files.list cat | sha256sum" \
    "$TRIXIE run true" >/dev/null
ratios "$json"
echo
echo "== CPU use: (user+sys) / wall, 2 cores = 2.0"
python3 - "$json" <<'PY'
import json, sys
for x in json.load(open(sys.argv[1]))["results"]:
    print(f"  {(x['user'] + x['system']) / x['mean']:5.2f}   {x['command']}")
PY
echo "(tmpfs: $T; samefs: $D/repo-samefs on the store's file system; the last command is the chroot's own overhead, included in the mkcomposefs time)"
python3 - "$json" <<'PY'
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
ours = next(v for k, v in r.items() if " composefs import " in k)
theirs = next(v for k, v in r.items() if "/repo " in k and k.endswith("--copy"))
print(f"== import into an empty repository on a tmpfs: composefs-rs {theirs:.2f} s / cstorage {ours:.2f} s = {theirs / ours:.2f}x (goal >= 2x)")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== peak RSS"
rm -rf "$T/repo" "$T/objs" "$T/ours" "$D/repo-samefs"
/usr/bin/time -f "  cstorage composefs digest: %M KiB" $CSTA composefs digest $IMG >/dev/null
/usr/bin/time -f "  cstorage composefs mkfs --digest-store (tmpfs): %M KiB" $CSTA composefs mkfs $IMG -o $T/x.cfs --digest-store $T/objs
/usr/bin/time -f "  cstorage composefs import --repo (tmpfs): %M KiB" $CSTA composefs import $IMG --repo $T/ours >/dev/null
CONTAINERS_STORAGE_ROOT=$ROOT /usr/bin/time -f "  composefs-rs import (tmpfs, copies): %M KiB" $CFSRS $T/repo $IMG --copy >/dev/null
