#!/usr/bin/env bash
# Benchmark: a rootless user exporting a layer of their own store in which half the files
# belong to a container user (0600, owned by a subordinate UID), so that they are opened
# through the user-namespace helper. Compared, into a pipe, with:
#   - the Go way for a rootless user: `podman unshare containers-storage diff -u`;
#   - cstorage inside `podman unshare` (no helper needed there);
#   - cstorage as root on the same store (no helper: the floor for the helper's cost).
# Runs as root; the store is written by `skopeo copy` as the user `cstorage-rl`
# (scripts/rootless-user.sh), kept in $BENCH_DIR/rootless. Not a test.
source "$(dirname "$0")/common.sh"
U=cstorage-rl
D=$BENCH_DIR/rootless
H=$D/home
if [ ! -f "$D/.done" ]; then
    rm -rf "$D"; mkdir -p "$H/run" "$D/layout"
    chown -R "$U:$U" "$H"; chmod 755 "$D"
    echo "building the layout and the rootless store (one-time)" >&2
    # /usr/share as one layer; every other regular file owned by container UID 1000, mode 0600.
    python3 - "$D/layer.tar" <<'PY'
import os, sys, tarfile
n = 0
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    for top, dirs, files in os.walk("/usr/share"):
        dirs.sort()
        for name in sorted(files) + []:
            p = os.path.join(top, name)
            if not os.path.isfile(p) or os.path.islink(p):
                continue
            ti = t.gettarinfo(p, arcname=p.lstrip("/"))
            ti.uid = ti.gid = 0; ti.uname = ti.gname = ""
            if n % 2:
                ti.uid = ti.gid = 1000; ti.mode = 0o600
            n += 1
            with open(p, "rb") as f:
                t.addfile(ti, f)
PY
    python3 - "$D/layer.tar" "$D/layout" <<'PY'
import hashlib, json, os, sys
tar, out = sys.argv[1], sys.argv[2]
os.makedirs(out + "/blobs/sha256", exist_ok=True)
def put(b):
    h = hashlib.sha256(b).hexdigest(); open(f"{out}/blobs/sha256/{h}", "wb").write(b); return "sha256:" + h, len(b)
ld, ls = put(open(tar, "rb").read())
cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode()
cd, cs = put(cfg)
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]}).encode()
md, ms = put(m)
open(out + "/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "share"}}]}, open(out + "/index.json", "w"))
PY
    rm -f "$D/layer.tar"; chmod -R a+rX "$D/layout"
    (cd "$D" && runuser -u "$U" -- env -i HOME="$H" XDG_RUNTIME_DIR="$H/run" PATH=/usr/bin:/bin \
        skopeo copy -q "oci:$D/layout:share" containers-storage:localhost/share:latest)
    rm -rf "$D/layout"
    touch "$D/.done"
fi
cp "$CST" "$D/cstorage"; chmod 755 "$D/cstorage"
AS_USER="cd $D && runuser -u $U -- env -i HOME=$H XDG_RUNTIME_DIR=$H/run PATH=/usr/bin:/bin"
L=$(eval "$AS_USER $D/cstorage layers -q" | head -n1)
ROOT=$H/.local/share/containers/storage
DIGEST=$(eval "$AS_USER $D/cstorage --format json layer inspect $L" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["diff_digest"])')
FILES=$(eval "$AS_USER $D/cstorage layer ls -l $L" | grep -c '^-' || true)
HELPED=$(eval "$AS_USER $D/cstorage --log-level debug layer export $L" 2>&1 >/dev/null | grep -c 'userns helper opened' || true)
machine_info
echo "layer: $L, $FILES regular files, $HELPED opened through the helper"
# Correctness first: every way gives the layer (sha256 = diff-digest).
test "sha256:$(eval "$AS_USER $D/cstorage layer export $L" | sha256sum | cut -c1-64)" = "$DIGEST"
test "sha256:$(eval "$AS_USER podman unshare containers-storage diff -u $L" | sha256sum | cut -c1-64)" = "$DIGEST"
test "sha256:$($D/cstorage --root $ROOT --runroot $H/run/containers layer export $L | sha256sum | cut -c1-64)" = "$DIGEST"
echo
echo "== into a pipe (ratio = time / cstorage as the user, with the helper)"
hyperfine --warmup 1 --runs ${RUNS:-5} --export-json "$D/pipe.json" \
    "$AS_USER $D/cstorage layer export $L | cat >/dev/null" \
    "$AS_USER podman unshare containers-storage diff -u $L | cat >/dev/null" \
    "$AS_USER podman unshare $D/cstorage layer export $L | cat >/dev/null" \
    "$D/cstorage --root $ROOT --runroot $H/run/containers layer export $L | cat >/dev/null" >/dev/null
ratios "$D/pipe.json"
