#!/bin/bash
# ensure-stores.sh - what the integration tests (crates/cstorage/tests/modern.rs) and CI run
# before reading the modern stores: builds or completes the cached trixie chroot, (re)creates
# every store with make-stores.sh, stops the registry, and leaves nothing mounted.
#
# Serialised with flock on $CACHE/.ensure.lock (exclusive), so two test binaries or a test
# and CI can run it at the same time; a reader holding the same lock shared (as the tests do
# while they read the stores) makes it wait instead of wiping stores under the reader.
# CSTORAGE_TRIXIE_LOCK_HELD=1: the caller holds that lock exclusively already.
# Any failure (no mirror, apt error, a tool failing) exits non-zero with the reason on stderr:
# the tests turn that into a failure, never a skip.
#
# usage: ensure-stores.sh [--keep-stores]   (--keep-stores: only create stores that are missing)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${CSTORAGE_TRIXIE_CACHE:-/var/cache/cstorage-trixie}
STORES=$CACHE/work/stores
ALL=(plain chunked composefs toconly imagestore transient built)
keep=0
[ "${1:-}" = --keep-stores ] && keep=1
[ "$(id -u)" = 0 ] || { echo "ensure-stores: ERROR: must run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
command -v flock >/dev/null || { echo "ensure-stores: ERROR: flock (util-linux) missing" >&2; exit 1; }
mkdir -p "$CACHE"
# A caller that already holds the lock exclusively (the tests take it themselves, then keep it
# shared while they read) says so; locking again through another open file would deadlock.
if [ "${CSTORAGE_TRIXIE_LOCK_HELD:-0}" != 1 ]; then
	exec 9>"$CACHE/.ensure.lock"
	flock -x 9
fi
t0=$(date +%s)
finish() {
	rc=$?
	# never leave the registry running or the chroot mounted, even on failure
	"$HERE/trixie-env.sh" teardown >/dev/null 2>&1 || true
	[ $rc = 0 ] || echo "ensure-stores: ERROR: failed (exit $rc); see the messages above" >&2
	exit $rc
}
trap finish EXIT
"$HERE/trixie-env.sh" setup
t1=$(date +%s)
if [ $keep = 1 ]; then
	todo=()
	[ -d "$CACHE/work/oci/test" ] || todo+=(layout)
	for s in "${ALL[@]}"; do [ -f "$STORES/$s/.complete" ] || todo+=("$s"); done
else
	todo=(layout "${ALL[@]}")
fi
for s in "${todo[@]}"; do
	rm -f "$STORES/$s/.complete"
	"$HERE/make-stores.sh" "$s"
	[ "$s" = layout ] || touch "$STORES/$s/.complete"
done
echo "ensure-stores: setup $((t1 - t0))s, stores $(($(date +%s) - t1))s (${todo[*]:-none})" >&2
