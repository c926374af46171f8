#!/bin/sh
# /init of the mm-template test initramfs (busybox).  Creates the CXL RAM
# region through sysfs, binds its dax device to device_dax and runs the
# selftest chosen on the kernel command line:
#   mmt.mode=local|nodeA|nodeB|pfns|shell  mmt.run=ID  mmt.off=MiB  mmt.pages=N
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { echo "mmt-init: [$(cut -d' ' -f1 /proc/uptime)] $*"; }

MODE=local RUN=1 OFF=0 PAGES=64
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	mmt.mode=*) MODE=${arg#mmt.mode=} ;;
	mmt.run=*) RUN=${arg#mmt.run=} ;;
	mmt.off=*) OFF=${arg#mmt.off=} ;;
	mmt.pages=*) PAGES=${arg#mmt.pages=} ;;
	esac
done

C=/sys/bus/cxl/devices
wait_for() { # path, tenths of a second
	i=0
	while [ ! -e "$1" ] && [ $i -lt "$2" ]; do sleep 0.1; i=$((i + 1)); done
	[ -e "$1" ]
}

cxl_region() {
	wait_for $C/mem0 100 || { log "no CXL memdev"; return 1; }
	i=0
	while [ -z "$(ls -d $C/endpoint*/decoder*.0 2>/dev/null)" ] && [ $i -lt 100 ]; do
		sleep 0.1; i=$((i + 1))
	done
	root=$C/decoder0.0
	ep=$(basename "$(ls -d $C/endpoint*/decoder*.0 | head -1)")
	size=$(cat $C/mem0/ram/size)
	region=$(cat $root/create_ram_region)
	echo "$region" > $root/create_ram_region || return 1
	R=$C/$region
	cat $root/interleave_granularity > $R/interleave_granularity || return 1
	echo 1 > $R/interleave_ways || return 1
	echo "$size" > $R/size || return 1
	echo ram > $C/$ep/mode || return 1
	echo "$size" > $C/$ep/dpa_size || return 1
	echo "$ep" > $R/target0 || return 1
	echo 1 > $R/commit || return 1
	echo "$region" > /sys/bus/cxl/drivers/cxl_region/bind || return 1
	log "$region committed: resource $(cat $R/resource) size $(cat $R/size) target $ep"
	wait_for /sys/bus/dax/devices/dax0.0 50 || { log "no dax0.0"; return 1; }
	echo dax0.0 > /sys/bus/dax/drivers/device_dax/new_id 2>/dev/null
	[ -e /sys/bus/dax/devices/dax0.0/driver ] ||
		echo dax0.0 > /sys/bus/dax/drivers/device_dax/bind
	wait_for /dev/dax0.0 50 || { log "no /dev/dax0.0"; return 1; }
	log "REGION_READY /dev/dax0.0 size $(cat /sys/bus/dax/devices/dax0.0/size) align $(cat /sys/bus/dax/devices/dax0.0/align)"
}

log "kernel $(uname -r) booted, mode $MODE"
# modular builds (config/modular-dax.fragment): load what mkinitramfs.sh put in
for m in /lib/modules/*.ko; do
	[ -e "$m" ] || continue
	insmod "$m" && log "insmod ${m##*/}" || log "insmod ${m##*/} FAILED"
done
if cxl_region; then
	grep -i -e cxl -e dax -e region /proc/iomem | sed 's/^/# iomem: /'
	case "$MODE" in
	local) /mmt_test -o "$OFF"; rc=$? ;;
	nodeA) /mmt_xnode node -r A -i "$RUN" -o "$OFF" -n "$PAGES"; rc=$? ;;
	nodeB) /mmt_xnode node -r B -i "$RUN" -o "$OFF" -n "$PAGES"; rc=$? ;;
	pfns) /mmt_xnode pfns -o "$OFF" -n "$PAGES"; rc=$? ;;
	shell) setsid cttyhack sh; rc=0 ;;
	*) log "unknown mode $MODE"; rc=2 ;;
	esac
else
	rc=3
fi
log "MMT_RESULT mode=$MODE rc=$rc"
dmesg | grep -c -e "WARNING:" -e "BUG:" -e "Oops" | sed 's/^/mmt-init: kernel log warnings: /'
sync
poweroff -f
