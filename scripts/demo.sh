#!/usr/bin/env bash
# The main job on a real store: builds cstorage, makes a small demo store with skopeo (two
# images sharing a base layer, written exactly as podman would write them), then lists and
# inspects it with cstorage. Pass --root PATH to use an existing store instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -q -p cstorage
CST=target/release/cstorage

if [ "${1:-}" = "--root" ]; then
    ROOT=$2
    ARGS=(--root "$ROOT")
else
    DEMO=${DEMO_DIR:-/tmp/cstorage-demo}
    ROOT=$DEMO/root
    if [ ! -d "$ROOT/overlay-images" ]; then
        echo "== creating a demo store in $DEMO with skopeo"
        rm -rf "$DEMO"; mkdir -p "$DEMO/base/etc" "$DEMO/base/usr/share/doc" "$DEMO/app/app"
        cp /etc/os-release /etc/hostname "$DEMO/base/etc/" 2>/dev/null || true
        cp -r /usr/share/doc/bash "$DEMO/base/usr/share/doc/" 2>/dev/null || true
        echo 'echo hello from the demo app' > "$DEMO/app/app/run.sh"
        scripts/mkoci.py "$DEMO/layout" base "$DEMO/base" >/dev/null
        scripts/mkoci.py "$DEMO/layout" app --label org.example=demo "$DEMO/base" "$DEMO/app" >/dev/null
        for t in base app; do
            skopeo copy -q "oci:$DEMO/layout:$t" \
                "containers-storage:[overlay@$ROOT+$DEMO/run:overlay.skip_mount_home=true]localhost/demo-$t:latest"
        done
    fi
    ARGS=(--root "$ROOT" --runroot "$DEMO/run" --storage-opt overlay.skip_mount_home=true)
fi

set -x
"$CST" "${ARGS[@]}" info
"$CST" "${ARGS[@]}" images
"$CST" "${ARGS[@]}" layers
FIRST=$("$CST" "${ARGS[@]}" images -q | head -n1)
"$CST" "${ARGS[@]}" image inspect "$FIRST" | head -n 40
