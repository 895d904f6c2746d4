#!/bin/bash
# make-stores.sh - create containers-storage stores with trixie's tools.
# usage: make-stores.sh [layout|plain|chunked|composefs|toconly|imagestore|transient|built|all]...
# Each store: $STORES/<name>/{root,run or r,storage.conf}; re-running a store wipes it first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ENV=$HERE/trixie-env.sh
CACHE=${CSTORAGE_TRIXIE_CACHE:-/var/cache/cstorage-trixie}
WORK=$CACHE/work
STORES=$WORK/stores
OCI=$WORK/oci/test
REG=127.0.0.1:5000
# Podman refuses run roots longer than 50 characters; $STORES/<name>/run is
# 39+len(name)+4 characters, so long store names use "r".
runroot_of() { local s=$STORES/$1; if [ ${#s} -le 46 ]; then echo "$s/run"; else echo "$s/r"; fi; }

log() { printf '\n=== %s: %s\n' "$(date +%T)" "$*" >&2; }
inchroot() { "$ENV" run "$@"; }
with_conf() { local n=$1; shift; CONTAINERS_STORAGE_CONF=$STORES/$n/storage.conf "$ENV" run "$@"; }

# write_conf NAME [extra lines for [storage]] -- overlay opts and pull opts via env
write_conf() {
	local n=$1 extra_storage=${2:-} partial=${PARTIAL:-false} overlay_extra=${OVERLAY_EXTRA:-}
	local insecure=${INSECURE:-false}
	local s=$STORES/$n rr; rr=$(runroot_of "$n")
	umount_store "$n"
	rm -rf "$s"
	mkdir -p "$s/root" "$rr"
	cat >"$s/storage.conf" <<-EOF
	# written by make-stores.sh for store "$n" (trixie: podman 5.4 / c/storage 1.57)
	[storage]
	driver = "overlay"
	graphroot = "$s/root"
	runroot = "$rr"
	$extra_storage

	[storage.options]
	pull_options = {enable_partial_images = "$partial", use_hard_links = "false", ostree_repos = "", insecure_allow_unpredictable_image_contents = "$insecure"}

	[storage.options.overlay]
	mountopt = "nodev"
	skip_mount_home = "true"
	$overlay_extra
	EOF
}

umount_store() {
	# unmount anything a tool left mounted inside the store (host view)
	local s=$STORES/$1 m
	awk -v r="$s" 'index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
		while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
	awk -v r="$CACHE/root$s" 'index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
		while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
}

copy_from_oci() { # NAME REF
	with_conf "$1" skopeo copy --quiet "oci:$OCI:v1" "containers-storage:$2"
}

PODMAN_G=(--cgroup-manager=cgroupfs --events-backend=file --runtime=runc)

do_layout() {
	log "building OCI layout $OCI"
	rm -rf "$OCI"; mkdir -p "$(dirname "$OCI")"
	cp "$HERE/make-oci-layout.py" "$WORK/make-oci-layout.py"
	inchroot python3 "$WORK/make-oci-layout.py" "$OCI" /bin/busybox | tee "$WORK/oci/test.json"
}

do_plain() {
	log plain
	write_conf plain
	time copy_from_oci plain localhost/test:v1
}

push_chunked() {
	"$ENV" registry-start
	log "push zstd:chunked to $REG"
	time inchroot skopeo copy --quiet --dest-compress-format zstd:chunked --dest-tls-verify=false \
		"oci:$OCI:v1" "docker://$REG/test:chunked"
	inchroot skopeo inspect --raw --tls-verify=false "docker://$REG/test:chunked" >"$WORK/oci/chunked-manifest.json"
}

do_chunked() {
	log chunked
	push_chunked
	PARTIAL=true write_conf chunked
	time with_conf chunked podman "${PODMAN_G[@]}" pull --quiet --tls-verify=false "$REG/test:chunked"
	with_conf chunked podman "${PODMAN_G[@]}" tag "$REG/test:chunked" localhost/test:chunked
	umount_store chunked
}

do_composefs() {
	log composefs
	push_chunked
	PARTIAL=true OVERLAY_EXTRA='use_composefs = "true"' write_conf composefs
	inchroot sh -c 'command -v mkcomposefs' || echo "WARNING: no mkcomposefs: use_composefs will fail" >&2
	time with_conf composefs skopeo copy --quiet --src-tls-verify=false \
		"docker://$REG/test:chunked" "containers-storage:$REG/test:chunked"
	umount_store composefs
}

do_toconly() {
	# eStargz layers pulled partially with insecure_allow_unpredictable_image_contents: no
	# tar-split, so c/storage records no diff-digest, only the TOC digest (and c/image the
	# expected DiffID in flags). (zstd:chunked blobs carry a tar-split, so c/storage 1.57
	# computes their DiffID even with that option.)
	log toconly
	"$ENV" registry-start
	rm -rf "$WORK/oci/estargz"
	python3 "$HERE/make-estargz.py" "$OCI:v1" "$WORK/oci/estargz:v1" >"$WORK/oci/estargz.json"
	inchroot skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
		"oci:$WORK/oci/estargz:v1" "docker://$REG/test:estargz"
	PARTIAL=true INSECURE=true write_conf toconly
	time with_conf toconly podman "${PODMAN_G[@]}" pull --quiet --tls-verify=false "$REG/test:estargz"
	umount_store toconly
}

do_imagestore() {
	log imagestore
	write_conf imagestore "imagestore = \"$STORES/imagestore/images\""
	mkdir -p "$STORES/imagestore/images"
	time copy_from_oci imagestore localhost/test:v1
}

do_transient() {
	log transient
	write_conf transient "transient_store = true"
	copy_from_oci transient localhost/test:v1
	time with_conf transient podman "${PODMAN_G[@]}" create --name ctr1 --network none localhost/test:v1 /bin/sh
	with_conf transient podman "${PODMAN_G[@]}" ps -a
	umount_store transient
}

do_built() {
	log built
	write_conf built
	copy_from_oci built localhost/test:v1
	mkdir -p "$WORK/build"
	cat >"$WORK/build/Containerfile" <<-'EOF'
	FROM localhost/test:v1
	RUN touch /built-marker
	RUN echo step2 > /etc/step2 && rm /var/old/keep.txt && rm -r /opq && mkdir -p /opq && echo again > /opq/again
	EOF
	local nofile nproc
	nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
	time with_conf built podman "${PODMAN_G[@]}" build --pull=never --layers \
		--runtime runc --network none \
		--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" \
		-t localhost/built:v1 -f "$WORK/build/Containerfile" "$WORK/build"
	# An untagged image with an image on its top layer that is not its child by podman's
	# rule (two history entries more, from a build without --layers): podman lists it as a
	# dangling <none> image, not as an intermediate one.
	cat >"$WORK/build/Containerfile.b2" <<-'EOF'
	FROM localhost/test:v1
	RUN touch /b2-marker
	EOF
	cat >"$WORK/build/Containerfile.b3" <<-'EOF'
	FROM localhost/b2:v1
	RUN touch /b3-one
	RUN touch /b3-two
	EOF
	for b in b2 b3; do
		with_conf built podman "${PODMAN_G[@]}" build --pull=never --layers=false \
			--runtime runc --network none \
			--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" \
			-t "localhost/$b:v1" -f "$WORK/build/Containerfile.$b" "$WORK/build"
	done
	with_conf built podman "${PODMAN_G[@]}" untag localhost/b2:v1
	with_conf built podman "${PODMAN_G[@]}" create --name ctr-built --network none localhost/built:v1 /bin/sh
	with_conf built podman "${PODMAN_G[@]}" images -a
	umount_store built
}

[ $# -gt 0 ] || set -- all
for t in "$@"; do
	case "$t" in
	all) do_layout; do_plain; do_chunked; do_composefs; do_toconly; do_imagestore; do_transient; do_built ;;
	layout|plain|chunked|composefs|toconly|imagestore|transient|built) "do_$t" ;;
	*) echo "unknown: $t" >&2; exit 2 ;;
	esac
done
