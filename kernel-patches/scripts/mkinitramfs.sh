#!/bin/sh
# Build the busybox initramfs that runs the mm-template selftests.
#   [MODULES="a.ko b.ko"] mkinitramfs.sh OUTPUT.cpio.gz
# MODULES are insmod-ed by /init, in that order, before the CXL set-up
# (for a build with config/modular-dax.fragment: device_dax.ko dax_cxl.ko).
# Needs busybox-static (/bin/busybox) and the static selftests (make -C
# kernel-patches/selftests).
set -eu
OUT=$(realpath -m "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
TESTS=$HERE/../selftests
BUSYBOX=${BUSYBOX:-/bin/busybox}

file "$BUSYBOX" | grep -q "statically linked" || { echo "$BUSYBOX is not static (apt install busybox-static)"; exit 1; }
for t in mmt_test mmt_xnode; do
	[ -x "$TESTS/$t" ] || { echo "build the selftests first: make -C $TESTS"; exit 1; }
done

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/dev" "$STAGE/proc" "$STAGE/sys" "$STAGE/tmp"
cp "$BUSYBOX" "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"
cp "$HERE/guest-init.sh" "$STAGE/init"
cp "$TESTS/mmt_test" "$TESTS/mmt_xnode" "$STAGE/"
chmod 0755 "$STAGE/init" "$STAGE/mmt_test" "$STAGE/mmt_xnode"
n=10
for m in ${MODULES:-}; do
	mkdir -p "$STAGE/lib/modules"
	cp "$m" "$STAGE/lib/modules/$n-$(basename "$m")"
	n=$((n + 1))
done
# the kernel opens /dev/console before /init mounts devtmpfs
mknod -m 0600 "$STAGE/dev/console" c 5 1
mknod -m 0666 "$STAGE/dev/null" c 1 3
(cd "$STAGE" && find . | sort | cpio -o -H newc --quiet) | gzip -9 > "$OUT"
echo "$OUT: $(du -h "$OUT" | cut -f1)"
