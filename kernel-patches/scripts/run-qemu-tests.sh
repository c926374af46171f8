#!/bin/bash
# Boot the mm-template kernel under bare QEMU (TCG) with an emulated CXL
# type-3 device and run the selftests.
#
#   run-qemu-tests.sh -k bzImage -i initramfs.cpio.gz [-d LOGDIR] [-t TIMEOUT] local|xnode|all
#
#   local: one VM runs mmt_test (TAP).
#   xnode: two VMs at once, each with its own cxl-type3 device (own serial
#          number) backed by the SAME /dev/shm file = one emulated
#          multi-headed device; they run "mmt_xnode node -r A" and "-r B".
#          Then the host compares the PFN lines of both nodes and checks
#          that the backing file still holds the template contents.
# The backing files are /dev/shm/mmt-dev-<pid>-*; they and the QEMU
# processes started here are removed on exit.
set -u
KERNEL= INITRD= LOGDIR=$PWD/mmt-logs TIMEOUT=900 OFF=4
while getopts "k:i:d:t:" o; do
	case $o in
	k) KERNEL=$(realpath "$OPTARG") ;;
	i) INITRD=$(realpath "$OPTARG") ;;
	d) LOGDIR=$OPTARG ;;
	t) TIMEOUT=$OPTARG ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
WHAT=${1:-all}
[ -f "$KERNEL" ] && [ -f "$INITRD" ] || { echo "need -k bzImage -i initramfs"; exit 2; }
mkdir -p "$LOGDIR"
QEMU=${QEMU:-qemu-system-x86_64}
PIDS=()
SHMS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	for f in "${SHMS[@]}"; do rm -f "$f"; done
}
trap cleanup EXIT INT TERM

new_shm() { # size -> sets SHM (not in a subshell: cleanup needs SHMS)
	SHM=/dev/shm/mmt-dev-$$-${#SHMS[@]}
	SHMS+=("$SHM")
	truncate -s "$1" "$SHM"
}

# start_vm NAME SHMFILE SERIAL APPEND -> sets VM_PID
start_vm() {
	local name=$1 shm=$2 sn=$3 append=$4
	"$QEMU" -machine q35,cxl=on,accel=tcg -cpu max,hypervisor=off -smp 1 \
		-m 1G,maxmem=8G,slots=4 \
		-object memory-backend-file,id=cxl-mem0,share=on,mem-path="$shm",size=512M \
		-device pxb-cxl,bus_nr=12,bus=pcie.0,id=cxl.1 \
		-device cxl-rp,port=0,bus=cxl.1,id=root_port13,chassis=0,slot=2 \
		-device cxl-type3,bus=root_port13,volatile-memdev=cxl-mem0,id=cxl-vmem0,sn="$sn" \
		-M cxl-fmw.0.targets.0=cxl.1,cxl-fmw.0.size=4G \
		-kernel "$KERNEL" -initrd "$INITRD" \
		-append "console=ttyS0 panic=-1 loglevel=4 $append" \
		-display none -monitor none -serial file:"$LOGDIR/$name.log" \
		-no-reboot > "$LOGDIR/$name.qemu.log" 2>&1 &
	VM_PID=$!
	PIDS+=("$VM_PID")
}

wait_vm() { # pid name start_seconds
	local pid=$1 name=$2 t0=$3 n=0
	while kill -0 "$pid" 2>/dev/null && [ $n -lt "$TIMEOUT" ]; do sleep 1; n=$((n + 1)); done
	if kill -0 "$pid" 2>/dev/null; then
		echo "$name: timeout after ${TIMEOUT}s"; kill "$pid"; wait "$pid" 2>/dev/null; return 1
	fi
	wait "$pid" 2>/dev/null
	echo "$name: QEMU wall time $(( $(date +%s) - t0 )) s; $(grep -o 'REGION_READY.*' "$LOGDIR/$name.log" | head -1)"
	grep "mmt-init: \[.*\] REGION_READY" "$LOGDIR/$name.log" | sed 's/^mmt-init: \[\([0-9.]*\)\].*/  guest uptime at region ready: \1 s/'
}

summary() { # name
	local log=$LOGDIR/$1.log
	local pass fail
	pass=$(grep -c "^ok " "$log")
	fail=$(grep -c "^not ok " "$log")
	echo "$1: $pass ok, $fail not ok; $(grep -o 'MMT_RESULT.*' "$log")"
	grep "^not ok " "$log" | sed 's/^/  /'
	[ "$fail" = 0 ] && grep -q "MMT_RESULT.* rc=0" "$log"
}

rc=0
if [ "$WHAT" = local ] || [ "$WHAT" = all ]; then
	new_shm 512M; shm=$SHM
	t0=$(date +%s)
	start_vm local "$shm" 1 "mmt.mode=local mmt.off=$OFF"
	wait_vm "$VM_PID" local "$t0" || rc=1
	summary local || rc=1
fi

if [ "$WHAT" = xnode ] || [ "$WHAT" = all ]; then
	new_shm 512M; shm=$SHM
	run=$(( (RANDOM << 16) | RANDOM | 1 ))
	t0=$(date +%s)
	start_vm nodeA "$shm" 0xa1 "mmt.mode=nodeA mmt.run=$run mmt.off=$OFF"
	pa=$VM_PID
	start_vm nodeB "$shm" 0xb2 "mmt.mode=nodeB mmt.run=$run mmt.off=$OFF"
	pb=$VM_PID
	wait_vm "$pa" nodeA "$t0" || rc=1
	wait_vm "$pb" nodeB "$t0" || rc=1
	summary nodeA || rc=1
	summary nodeB || rc=1
	grep "^pfn " "$LOGDIR/nodeA.log" > "$LOGDIR/nodeA.pfn"
	grep "^pfn " "$LOGDIR/nodeB.log" > "$LOGDIR/nodeB.pfn"
	if [ -s "$LOGDIR/nodeA.pfn" ] && cmp -s "$LOGDIR/nodeA.pfn" "$LOGDIR/nodeB.pfn"; then
		echo "xnode: both nodes map the same device offsets at the same PFNs ($(wc -l < "$LOGDIR/nodeA.pfn") pages), e.g. $(head -1 "$LOGDIR/nodeA.pfn")"
	else
		echo "xnode: PFN lines differ or are missing"; rc=1
	fi
	# host view: the backing file at the template offset still holds what
	# node A wrote through MAP_SHARED (pattern of mmt_util.h), not the
	# private writes ('A'/'B') of either node.
	if python3 - "$shm" "$OFF" "$run" "$(wc -l < "$LOGDIR/nodeA.pfn")" <<'PY'
import sys
path, off, run, n = sys.argv[1], int(sys.argv[2]) << 20, int(sys.argv[3]), int(sys.argv[4])
gen = run & 0xff
with open(path, 'rb') as f:
    f.seek(off)
    data = f.read(n * 4096)
bad = sum(1 for pg in range(n) for i in range(0, 4096, 97)
          if data[pg * 4096 + i] != (gen * 131 + pg * 7 + i * 13 + 1) & 0xff)
print("host: backing file holds the template contents at offset %#x for %d pages: %s"
      % (off, n, "yes" if bad == 0 and n > 0 else "NO (%d bad bytes)" % bad))
sys.exit(0 if bad == 0 and n > 0 else 1)
PY
	then :; else rc=1; fi
fi
exit $rc
