#!/bin/bash
# Configure and build the guest kernel.
#
#   build-kernel.sh -s SRC -o OUT [-f FRAGMENT]... [-j JOBS] [-c] [-n]
#
#   SRC  Linux 6.12 tree with the series applied
#   OUT  build directory (O=); created; an existing .config is replaced
#   -f   config fragments merged, in order, on top of x86_64 defconfig +
#        kvm_guest.config (default: ../config/mm-template.fragment)
#   -c   use ccache (CCACHE_DIR defaults to /var/cache/cxl-testbed/ccache)
#   -n   configure and check only, do not build
#
# After merging, every CONFIG_ line of the fragments (the last one wins) is
# checked against the final .config: merge_config.sh only warns when an
# option is dropped because its dependencies are not met.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC= OUT= JOBS=2 CCACHE=0 BUILD=1
FRAGS=()
while getopts "s:o:f:j:cn" o; do
	case $o in
	s) SRC=$(realpath "$OPTARG") ;;
	o) OUT=$(realpath -m "$OPTARG") ;;
	f) FRAGS+=("$(realpath "$OPTARG")") ;;
	j) JOBS=$OPTARG ;;
	c) CCACHE=1 ;;
	n) BUILD=0 ;;
	*) exit 2 ;;
	esac
done
[ -n "$SRC" ] && [ -n "$OUT" ] || { echo "usage: $0 -s SRC -o OUT [-f FRAGMENT]... [-j JOBS] [-c] [-n]"; exit 2; }
[ ${#FRAGS[@]} -gt 0 ] || FRAGS=("$HERE/../config/mm-template.fragment")

mkdir -p "$OUT"
rm -f "$OUT/.config"
make -s -C "$SRC" O="$OUT" defconfig
make -s -C "$SRC" O="$OUT" kvm_guest.config
"$SRC/scripts/kconfig/merge_config.sh" -m -O "$OUT" "$OUT/.config" "${FRAGS[@]}" > "$OUT/merge_config.log" 2>&1
make -s -C "$SRC" O="$OUT" olddefconfig

# check: the last value requested for each option is the final one
bad=0
declare -A want
for f in "${FRAGS[@]}"; do
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*) want[${line%%=*}]=${line#*=} ;;
		"# CONFIG_"*" is not set") k=${line#\# }; want[${k%% *}]=n ;;
		esac
	done < "$f"
done
for k in "${!want[@]}"; do
	v=${want[$k]}
	if [ "$v" = n ]; then
		if grep -q "^$k=" "$OUT/.config"; then
			echo "config: $k requested off, is $(grep "^$k=" "$OUT/.config")"
		fi
	elif ! grep -qx "$k=$v" "$OUT/.config"; then
		echo "config: $k=$v requested, final: $(grep -E "^$k=|^# $k is not set" "$OUT/.config" || echo absent)"
		bad=1
	fi
done
[ $bad = 0 ] || { echo "config check FAILED (see $OUT/merge_config.log)"; exit 1; }
echo "config check: all requested options are set ($OUT/.config)"
[ $BUILD = 1 ] || exit 0

CC=gcc
if [ $CCACHE = 1 ]; then
	export CCACHE_DIR=${CCACHE_DIR:-/var/cache/cxl-testbed/ccache}
	CC="ccache gcc"
fi
start=$(date +%s)
make -C "$SRC" O="$OUT" -j"$JOBS" CC="$CC" bzImage modules
echo "build: $(( $(date +%s) - start )) s wall, $OUT/arch/x86/boot/bzImage"
