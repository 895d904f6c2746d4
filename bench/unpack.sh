#!/usr/bin/env bash
# Benchmark: writing a 3-layer, 1.3 GB image's root filesystem into a directory.
#   cstorage unpack (CRC-checked, and --no-verify)
#   vs  umoci unpack of an OCI layout of the same image (the skopeo copy it needs first is
#       timed once, separately)
#   vs  podman create + podman export | tar x
#   floor: cp -a (with reflinks where the file system has them) and tar c | tar x of an
#   unpacked tree on the same file system.
# Uses the store of bench/image-export.sh ($BENCH_DIR/image-1g, built once). The trees are
# written under $UNPACK_TARGET (default $BENCH_DIR/image-1g/unpack, the store's file system;
# e.g. a tmpfs mount to take the disk out). Not a test.
source "$(dirname "$0")/common.sh"
use_image_1g
U=${UNPACK_TARGET:-$D/unpack}
mkdir -p "$U" "$D/unpack"
OUT=$U/out
OCI=$D/unpack/oci
machine_info
echo "umoci: $(umoci --version)"
echo "target file system: $(stat -f -c %T "$U") ($U)"
echo "image: localhost/big:latest, $($CSTA images --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["size"])') bytes, 3 layers"

# The OCI layout umoci needs: skopeo copy, timed once.
if [ ! -f "$OCI.done" ]; then
    rm -rf "$OCI"
    s=$(date +%s.%N)
    skopeo copy -q "${SPEC}localhost/big:latest" "oci:$OCI:big"
    e=$(date +%s.%N)
    python3 -c "print(f'skopeo copy containers-storage:... oci:... (once, for umoci): {$e-$s:.2f} s')" | tee "$OCI.time"
    touch "$OCI.done"
else
    cat "$OCI.time"
fi

# Correctness first: our tree equals umoci's (paths, types, modes, owners, sizes, contents).
rm -rf "$U/floor" "$U/umoci"
$CSTA unpack localhost/big:latest "$U/floor"
umoci unpack --image "$OCI:big" "$U/umoci" >/dev/null 2>&1
if ! diff -r --no-dereference "$U/floor" "$U/umoci/rootfs" >/dev/null; then
    echo "cstorage unpack and umoci unpack differ" >&2; exit 1
fi
python3 - "$U/floor" "$U/umoci/rootfs" <<'PY'
import os, sys
def meta(r):
    out = {}
    for dp, dns, fns in os.walk(r):
        for n in dns + fns:
            p = os.path.join(dp, n); st = os.lstat(p)
            out[os.path.relpath(p, r)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size if not os.path.isdir(p) or os.path.islink(p) else 0, st.st_mtime_ns)
    return out
a, b = meta(sys.argv[1]), meta(sys.argv[2])
bad = [k for k in set(a) | set(b) if a.get(k) != b.get(k)]
print(f"checked: {len(a)} paths, same content, modes, owners, sizes and times as umoci: {'yes' if not bad else 'NO: ' + str(bad[:5])}")
sys.exit(1 if bad else 0)
PY
rm -rf "$U/umoci"

CTR_EXPORT="c=\$($PODMAN create -q localhost/big:latest /bin/true) && mkdir $OUT && $PODMAN export \$c | tar -C $OUT -xpf - && $PODMAN rm -f \$c >/dev/null"
hyperfine --warmup 1 --runs ${RUNS:-3} --export-json "$U/unpack.json" --prepare "rm -rf $OUT; sync" \
    "$CSTA unpack localhost/big:latest $OUT" \
    "$CSTA unpack --no-verify localhost/big:latest $OUT" \
    "umoci unpack --image $OCI:big $OUT" \
    "$CTR_EXPORT" \
    "cp -a --reflink=auto $U/floor $OUT" \
    "mkdir $OUT && tar -C $U/floor -cf - . | tar -C $OUT -xpf -" >/dev/null
echo "== unpack into a new directory (ratio = time / cstorage unpack)"
ratios "$U/unpack.json"
rm -rf "$OUT"
