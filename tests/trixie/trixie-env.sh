#!/bin/bash
# trixie-env.sh - a Debian 13 (trixie) chroot with modern container tools
# (podman 5.x, skopeo 1.18, containers-storage 1.57, docker-registry, ...)
# for creating containers-storage stores in the *current* on-disk format.
#
# Subcommands:
#   setup            build/complete the cached chroot (idempotent), then mount
#   mount            (re)create the mounts only
#   run CMD...       run CMD inside the chroot (mounts are ensured first)
#   shell            interactive shell inside the chroot
#   registry-start   docker-registry on 127.0.0.1:5000, data under $WORK/registry
#   registry-stop
#   teardown         stop the registry, unmount everything under the chroot
#                    (the chroot itself stays cached)
#   status
#
# Environment overrides:
#   CSTORAGE_TRIXIE_CACHE (default /var/cache/cstorage-trixie)
#   TRIXIE_MIRROR         (default http://deb.debian.org/debian)
#   TRIXIE_NO_SID=1       never add sid for the composefs package
#
# The host directory $WORK (default $CACHE/work) is bind-mounted into the
# chroot at the same absolute path, so stores created inside are readable
# from the host under the same paths.
set -euo pipefail

CACHE=${CSTORAGE_TRIXIE_CACHE:-/var/cache/cstorage-trixie}
ROOT=$CACHE/root
WORK=$CACHE/work
MIRROR=${TRIXIE_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie
REG_ADDR=127.0.0.1:5000
REG_DIR=$WORK/registry
PACKAGES=(podman skopeo containers-storage docker-registry fuse-overlayfs
          tar-split umoci runc conmon golang-github-containers-common netavark
          catatonit busybox-static python3 ca-certificates zstd jq file oras)

die() { echo "trixie-env: ERROR: $*" >&2; exit 1; }
log() { echo "trixie-env: $*" >&2; }
trap 'rc=$?; echo "trixie-env: ERROR: command failed (exit $rc) at line $LINENO: $BASH_COMMAND" >&2; exit $rc' ERR

[ "$(id -u)" = 0 ] || die "must run as root"

is_mounted() { mountpoint -q "$1" 2>/dev/null; }

# Mounts below $ROOT, deepest first (also anything podman left in the chroot).
mounts_under_root() {
	# /proc/self/mountinfo field 5 is the mount point (octal-escaped)
	awk -v r="$ROOT" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo |
		sort -r | uniq
}

do_mount() {
	[ -x "$ROOT/bin/sh" ] || die "chroot $ROOT not built (run: $0 setup)"
	mkdir -p "$WORK"
	# 1. the chroot dir bound onto itself and private: pivot_root / remount
	#    inside (skopeo/podman) fail with "remount /: invalid argument" otherwise,
	#    and nothing we mount leaks to or from the host.
	if ! is_mounted "$ROOT"; then
		mount --bind "$ROOT" "$ROOT"
	fi
	mount --make-private "$ROOT"
	if ! is_mounted "$ROOT/proc"; then mount -t proc proc "$ROOT/proc"; fi
	if ! is_mounted "$ROOT/sys"; then
		mount --rbind /sys "$ROOT/sys"
		mount --make-rslave "$ROOT/sys"
	fi
	if ! is_mounted "$ROOT/dev"; then mount --bind /dev "$ROOT/dev"; fi
	mkdir -p "$ROOT/dev/pts" "$ROOT/dev/shm"
	# /dev is a bind of the host /dev: /dev/pts and /dev/shm inside the bind are
	# the host's directories, mount over them in the chroot's view only.
	if ! is_mounted "$ROOT/dev/pts"; then mount --bind /dev/pts "$ROOT/dev/pts"; fi
	if ! is_mounted "$ROOT/dev/shm"; then mount -t tmpfs -o mode=1777,nosuid,nodev shm "$ROOT/dev/shm"; fi
	if ! is_mounted "$ROOT/run"; then
		mount -t tmpfs -o mode=755,nosuid,nodev run "$ROOT/run"
	fi
	mkdir -p "$ROOT/run/lock" "$ROOT/run/containers"
	mkdir -p "$ROOT$WORK"
	if ! is_mounted "$ROOT$WORK"; then mount --bind "$WORK" "$ROOT$WORK"; fi
	mount --make-private "$ROOT$WORK"
	cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
}

do_umount() {
	local m n=0
	for pass in 1 2 3; do
		n=0
		while read -r m; do
			[ -n "$m" ] || continue
			m=$(printf '%b' "$m")   # unescape \040 etc.
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
			n=$((n + 1))
		done < <(mounts_under_root)
		[ "$n" = 0 ] && return 0
	done
	if [ -n "$(mounts_under_root)" ]; then
		die "still mounted under $ROOT: $(mounts_under_root | tr '\n' ' ')"
	fi
}

in_chroot() {
	chroot "$ROOT" /usr/bin/env -i \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
		DEBIAN_FRONTEND=noninteractive \
		${CONTAINERS_STORAGE_CONF:+CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF} \
		${CONTAINERS_CONF:+CONTAINERS_CONF=$CONTAINERS_CONF} \
		${STORAGE_DRIVER:+STORAGE_DRIVER=$STORAGE_DRIVER} \
		"$@"
}

do_setup() {
	local t0; t0=$(date +%s)
	command -v debootstrap >/dev/null || {
		log "installing debootstrap on the host"
		apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null ||
			die "cannot install debootstrap on the host"
	}
	mkdir -p "$CACHE" "$WORK"
	if [ ! -e "$ROOT/.trixie-env-debootstrap-ok" ]; then
		if [ -e "$ROOT" ]; then
			log "removing incomplete chroot $ROOT"
			do_umount
			rm -rf --one-file-system "$ROOT"
		fi
		log "debootstrap --variant=minbase $SUITE $ROOT $MIRROR"
		if ! debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" \
			>"$CACHE/debootstrap.log" 2>&1; then
			tail -n 30 "$CACHE/debootstrap.log" >&2
			[ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOT/debootstrap/debootstrap.log" >&2
			die "debootstrap of $SUITE into $ROOT failed (full log: $CACHE/debootstrap.log)"
		fi
		[ -x "$ROOT/usr/bin/apt-get" ] || die "debootstrap finished but $ROOT has no apt-get"
		touch "$ROOT/.trixie-env-debootstrap-ok"
	fi
	do_mount
	# don't start services from maintainer scripts inside the chroot
	printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
	chmod 755 "$ROOT/usr/sbin/policy-rc.d"
	# (re)install when a package of the list is missing (the list may grow)
	if [ ! -e "$ROOT/.trixie-env-packages-ok" ] ||
	   ! in_chroot dpkg-query -W "${PACKAGES[@]}" >/dev/null 2>&1; then
		log "apt-get install ${PACKAGES[*]}"
		in_chroot apt-get update -q >"$CACHE/apt.log" 2>&1 ||
			{ tail -n 20 "$CACHE/apt.log" >&2; die "apt-get update in chroot failed"; }
		in_chroot apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$CACHE/apt.log" 2>&1 ||
			{ tail -n 30 "$CACHE/apt.log" >&2; die "apt-get install in chroot failed (log $CACHE/apt.log)"; }
		touch "$ROOT/.trixie-env-packages-ok"
	fi
	if ! in_chroot sh -c 'command -v mkcomposefs' >/dev/null; then
		log "trying to install composefs (mkcomposefs) from $SUITE"
		if in_chroot apt-get install -y -q --no-install-recommends composefs >>"$CACHE/apt.log" 2>&1; then
			log "composefs installed from $SUITE"
		elif [ "${TRIXIE_NO_SID:-0}" != 1 ]; then
			log "composefs not installable from $SUITE; adding sid pinned to composefs only"
			echo "deb $MIRROR sid main" >"$ROOT/etc/apt/sources.list.d/sid.list"
			cat >"$ROOT/etc/apt/preferences.d/sid-composefs" <<-EOF
			Package: *
			Pin: release n=sid
			Pin-Priority: 100

			Package: composefs libcomposefs1
			Pin: release n=sid
			Pin-Priority: 990
			EOF
			# the mirror may serve a sid Release file whose Valid-Until is in the past
			# relative to this machine's clock: apt then ignores sid ("Release file ...
			# is expired"), so don't check it.
			echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99no-check-valid-until"
			in_chroot apt-get update -q >>"$CACHE/apt.log" 2>&1 || true
			in_chroot apt-get install -y -q --no-install-recommends -t sid composefs >>"$CACHE/apt.log" 2>&1 ||
				log "WARNING: composefs not installable from sid either (see $CACHE/apt.log); composefs stores unavailable"
		fi
	fi
	# crane (go-containerregistry) is packaged in sid only; the serve tests pull with it.
	if ! in_chroot sh -c 'command -v crane' >/dev/null && [ -e "$ROOT/etc/apt/sources.list.d/sid.list" ]; then
		log "installing crane from sid"
		in_chroot apt-get install -y -q --no-install-recommends -t sid crane >>"$CACHE/apt.log" 2>&1 ||
			log "WARNING: crane not installable from sid (see $CACHE/apt.log)"
	fi
	in_chroot apt-get clean >/dev/null 2>&1 || true
	log "setup done in $(( $(date +%s) - t0 ))s"
	in_chroot dpkg-query -W podman skopeo containers-storage docker-registry fuse-overlayfs \
		tar-split umoci runc conmon composefs >&2 2>/dev/null || true
	in_chroot sh -c 'command -v mkcomposefs >/dev/null || echo "trixie-env: WARNING: mkcomposefs not installed"' >&2
}

reg_pid() { [ -f "$REG_DIR/pid" ] && cat "$REG_DIR/pid" || true; }

do_registry_start() {
	do_mount
	local pid; pid=$(reg_pid)
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then log "registry already running (pid $pid)"; return 0; fi
	mkdir -p "$REG_DIR/data"
	cat >"$REG_DIR/config.yml" <<-EOF
	version: 0.1
	log:
	  level: warn
	storage:
	  filesystem:
	    rootdirectory: $REG_DIR/data
	  delete:
	    enabled: true
	http:
	  addr: $REG_ADDR
	EOF
	local bin=/usr/bin/docker-registry
	[ -x "$ROOT$bin" ] || die "docker-registry not installed in chroot"
	setsid chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
		"$bin" serve "$REG_DIR/config.yml" >"$REG_DIR/registry.log" 2>&1 </dev/null &
	echo $! >"$REG_DIR/pid"
	for _ in $(seq 50); do
		if in_chroot sh -c "exec 3<>/dev/tcp/127.0.0.1/5000" 2>/dev/null ||
		   (exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null; then
			log "registry up on $REG_ADDR (pid $(reg_pid))"; return 0
		fi
		kill -0 "$(reg_pid)" 2>/dev/null || { cat "$REG_DIR/registry.log" >&2; die "registry exited"; }
		sleep 0.2
	done
	cat "$REG_DIR/registry.log" >&2
	die "registry did not come up on $REG_ADDR"
}

do_registry_stop() {
	local pid; pid=$(reg_pid)
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid"
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
		log "registry (pid $pid) stopped"
	fi
	rm -f "$REG_DIR/pid"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
setup) do_setup ;;
mount) do_mount ;;
run)
	[ $# -gt 0 ] || die "usage: $0 run CMD..."
	do_mount
	trap - ERR
	in_chroot "$@"
	;;
shell) do_mount; trap - ERR; in_chroot /bin/bash -l ;;
registry-start) do_registry_start ;;
registry-stop) do_registry_stop ;;
teardown)
	do_registry_stop
	do_umount
	log "teardown done (chroot kept in $ROOT)"
	;;
status)
	echo "root: $ROOT ($( [ -e "$ROOT/.trixie-env-packages-ok" ] && echo ready || echo 'not ready'))"
	echo "registry pid: $(reg_pid)"
	echo "mounts:"; mounts_under_root
	;;
*) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] && exit 2; die "unknown subcommand: $cmd" ;;
esac
