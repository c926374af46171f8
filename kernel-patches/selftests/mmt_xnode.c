// SPDX-License-Identifier: GPL-2.0
/*
 * mm-template, cross-node part: two hosts (VMs) whose device-dax devices
 * are the same memory (one emulated multi-headed CXL device = one backing
 * file) attach the same template.
 *
 *   mmt_xnode pfns  [-d DEV] [-o OFFSET_MIB] [-n PAGES]
 *	Attach a read-only template of PAGES pages at OFFSET_MIB and print,
 *	for every page, "pfn <device offset> <pfn>" as read from
 *	/proc/self/pagemap, plus "dax <name> <phys start> <phys end>".  An
 *	outer harness compares the output of two nodes.
 *
 *   mmt_xnode node -r A|B -i RUN_ID [-d DEV] [-o OFFSET_MIB] [-n PAGES]
 *		   [-t TIMEOUT_S]
 *	The two roles of the cross-node test, synchronised through a
 *	mailbox in the shared device memory (the page after the data):
 *	 A: writes the template contents through MAP_SHARED, registers and
 *	    attaches (pre-populated) the template, prints the PFN lines,
 *	    writes privately into the first half of it, checks the device is
 *	    unchanged, and posts READY;
 *	 B: waits for READY, registers and attaches the same template on its
 *	    own kernel, checks it reads A's original contents (A's private
 *	    writes are invisible across nodes), prints the PFN lines, writes
 *	    privately into the second half, checks the device, posts DONE
 *	    with a checksum of what it read;
 *	 A: checks B's checksum, that its own copies are intact, that B's
 *	    writes are invisible to it, and that the device never changed.
 *	Output is TAP.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <time.h>
#include "mmt_util.h"

#define VA	0x520000000000UL
#define MB_MAGIC 0x4d4d54584e4f4445ULL	/* "MMTXNODE" */

enum { ST_NONE, ST_A_READY, ST_B_DONE, ST_A_DONE };

struct mailbox {
	volatile uint64_t magic;
	volatile uint64_t run_id;
	volatile uint32_t state;
	volatile uint32_t npages;
	volatile uint64_t sum_a;	/* checksum of the template contents */
	volatile uint64_t sum_b;	/* checksum of what B read */
	volatile uint64_t b_fail;	/* B's failed checks */
};

static struct dax_dev dax;
static int dax_fd, mfd;
static uint64_t base, npages = 64;

static uint64_t checksum(const uint8_t *p, size_t len)
{
	uint64_t h = 1469598103934665603ULL;	/* FNV-1a */
	size_t i;

	for (i = 0; i < len; i++)
		h = (h ^ p[i]) * 1099511628211ULL;
	return h;
}

static void setup(const char *path)
{
	if (dax_dev_init(&dax, path))
		die("cannot find the device-dax instance");
	dax_fd = open(path, O_RDWR | O_CLOEXEC);
	if (dax_fd < 0)
		die(path);
	mfd = mmt_open();
	if (mfd < 0)
		die("/dev/mm_template");
	if (base % (2UL << 20) || npages < 2 || npages > 256 ||
	    base + (2UL << 20) > dax.size) {
		errno = EINVAL;
		die("bad -o / -n");
	}
	printf("dax %s %#" PRIx64 " %#" PRIx64 "\n", dax.name, dax.start, dax.end);
}

static int attach_template(const char *name, uint32_t prot, unsigned int flags)
{
	struct mmt_area a = { .addr = VA, .len = npages * PAGE,
			      .offset = base, .prot = prot };
	int ret;

	mmt_remove(mfd, name);		/* left over from an earlier run */
	ret = mmt_register(mfd, name, dax_fd, &a, 1);
	if (ret)
		return ret;
	return mmt_attach(mfd, name, flags);
}

/* "pfn <device offset> <pfn>" per page; number of pages on the device */
static int print_pfns(void)
{
	uint64_t i;
	int ondev = 0;

	for (i = 0; i < npages; i++) {
		uint64_t pfn = pfn_at(0, VA + i * PAGE);

		printf("pfn %#" PRIx64 " %#" PRIx64 "\n", base + i * PAGE, pfn);
		if (pfn == dax_pfn(&dax, base + i * PAGE))
			ondev++;
	}
	return ondev;
}

static int cmd_pfns(void)
{
	volatile uint8_t sink = 0;
	uint64_t i;
	int ondev;

	TAP_OK(attach_template("pfns", PROT_READ, 0) == 0, "attach a %" PRIu64 "-page template at offset %#" PRIx64,
	       npages, base);
	for (i = 0; i < npages; i++)
		sink += *(volatile uint8_t *)(VA + i * PAGE);
	(void)sink;
	ondev = print_pfns();
	TAP_OK(ondev == (int)npages, "every page maps the device page at its offset (%d/%" PRIu64 ")",
	       ondev, npages);
	mmt_detach(mfd, "pfns");
	TAP_OK(mmt_remove(mfd, "pfns") == 0, "detach and remove");
	return tap_done();
}

static bool wait_state(struct mailbox *mb, uint64_t run_id, uint32_t state,
		       int timeout)
{
	time_t end = time(NULL) + timeout;

	while (time(NULL) < end) {
		__sync_synchronize();
		if (mb->magic == MB_MAGIC && mb->run_id == run_id &&
		    mb->state == state)
			return true;
		usleep(20000);
	}
	return false;
}

static int role_a(struct mailbox *mb, uint8_t *dev, uint64_t run_id, int timeout)
{
	uint8_t *t = (uint8_t *)VA;
	uint64_t i, sum, half = npages / 2;
	struct mmt_info info;
	int ok;

	memset((void *)mb, 0, sizeof(*mb));
	__sync_synchronize();
	for (i = 0; i < npages; i++)
		fill_page(dev + i * PAGE, (unsigned int)(run_id & 0xff), i);
	sum = checksum(dev, npages * PAGE);
	msync(dev, 2UL << 20, MS_SYNC);

	TAP_OK(attach_template("xnode", PROT_READ | PROT_WRITE, MMT_ATTACH_POPULATE) == 0,
	       "A: register + attach (populated) the template");
	ok = print_pfns();
	TAP_OK(ok == (int)npages, "A: all %" PRIu64 " pages map the device pages (%d)", npages, ok);
	TAP_OK(checksum(t, npages * PAGE) == sum, "A: template reads the contents A wrote");

	for (i = 0; i < half; i++)
		memset(t + i * PAGE, 'A', PAGE);
	for (ok = 0, i = 0; i < half; i++)
		if (!dax_pfn_in(&dax, pfn_at(0, VA + i * PAGE)))
			ok++;
	TAP_OK(ok == (int)half, "A: the %" PRIu64 " written pages are private copies (%d)", half, ok);
	TAP_OK(checksum(dev, npages * PAGE) == sum, "A: device unchanged by A's writes");
	mmt_info(mfd, "xnode", &info, 0);
	TAP_OK(info.cow_copies == half && info.shared_maps == npages,
	       "A: statistics shared_maps %" PRIu64 " cow_copies %" PRIu64,
	       (uint64_t)info.shared_maps, (uint64_t)info.cow_copies);

	mb->npages = npages;
	mb->sum_a = sum;
	mb->run_id = run_id;
	mb->magic = MB_MAGIC;
	__sync_synchronize();
	mb->state = ST_A_READY;
	__sync_synchronize();
	msync(dev, 2UL << 20, MS_SYNC);
	tap_diag("A: READY, waiting for B");

	TAP_OK(wait_state(mb, run_id, ST_B_DONE, timeout), "A: B finished");
	TAP_OK(mb->sum_b == sum, "A: B read the original contents, not A's private writes");
	TAP_OK(mb->b_fail == 0, "A: B reported no failed check (%" PRIu64 ")", (uint64_t)mb->b_fail);
	for (ok = 0, i = 0; i < npages; i++) {
		if (i < half)
			ok += t[i * PAGE] == 'A' && t[i * PAGE + PAGE - 1] == 'A';
		else
			ok += check_page(t + i * PAGE, (unsigned int)(run_id & 0xff), i);
	}
	TAP_OK(ok == (int)npages, "A: A's copies intact, B's writes invisible to A (%d)", ok);
	TAP_OK(checksum(dev, npages * PAGE) == sum, "A: device still unchanged after both nodes wrote");

	TAP_OK(mmt_detach(mfd, "xnode") == 0 && mmt_remove(mfd, "xnode") == 0,
	       "A: detach and remove");
	mb->state = ST_A_DONE;
	__sync_synchronize();
	return tap_done();
}

static int role_b(struct mailbox *mb, uint8_t *dev, uint64_t run_id, int timeout)
{
	uint8_t *t = (uint8_t *)VA;
	uint64_t i, sum, half;
	struct mmt_info info;
	int ok, fail = 0;

	TAP_OK(wait_state(mb, run_id, ST_A_READY, timeout), "B: A is ready (run %#" PRIx64 ")", run_id);
	if (mb->state != ST_A_READY)
		return tap_done();
	npages = mb->npages;
	half = npages / 2;
	sum = checksum(dev, npages * PAGE);
	ok = sum == mb->sum_a;
	fail += !ok;
	TAP_OK(ok, "B: device holds what A wrote through MAP_SHARED on the other node");

	ok = attach_template("xnode", PROT_READ | PROT_WRITE, 0) == 0;
	fail += !ok;
	TAP_OK(ok, "B: register + attach (lazy) the same template");
	mb->sum_b = checksum(t, npages * PAGE);
	ok = mb->sum_b == sum;
	fail += !ok;
	TAP_OK(ok, "B: template reads the original contents: A's private writes are invisible");
	ok = print_pfns();
	fail += ok != (int)npages;
	TAP_OK(ok == (int)npages, "B: all %" PRIu64 " pages map the device pages (%d)", npages, ok);

	for (i = half; i < npages; i++)
		memset(t + i * PAGE, 'B', PAGE);
	ok = checksum(dev, npages * PAGE) == sum;
	fail += !ok;
	TAP_OK(ok, "B: device unchanged by B's writes");
	mmt_info(mfd, "xnode", &info, 0);
	ok = info.shared_maps == npages && info.cow_copies == npages - half;
	fail += !ok;
	TAP_OK(ok, "B: statistics shared_maps %" PRIu64 " cow_copies %" PRIu64,
	       (uint64_t)info.shared_maps, (uint64_t)info.cow_copies);

	mb->b_fail = fail;
	__sync_synchronize();
	mb->state = ST_B_DONE;
	__sync_synchronize();
	msync(dev, 2UL << 20, MS_SYNC);

	TAP_OK(wait_state(mb, run_id, ST_A_DONE, timeout), "B: A finished its checks");
	TAP_OK(mmt_detach(mfd, "xnode") == 0 && mmt_remove(mfd, "xnode") == 0,
	       "B: detach and remove");
	return tap_done();
}

int main(int argc, char **argv)
{
	const char *path = "/dev/dax0.0", *cmd;
	char role = 0;
	uint64_t run_id = 0;
	int opt, timeout = 300, kfd, ret, bad;
	uint8_t *dev;

	if (argc < 2) {
		fprintf(stderr, "usage: %s pfns|node [-r A|B] [-i RUN_ID] [-d DEV] [-o OFFSET_MIB] [-n PAGES] [-t TIMEOUT]\n",
			argv[0]);
		return 2;
	}
	cmd = argv[1];
	optind = 2;
	while ((opt = getopt(argc, argv, "r:i:d:o:n:t:")) != -1) {
		switch (opt) {
		case 'r': role = optarg[0]; break;
		case 'i': run_id = strtoull(optarg, NULL, 0); break;
		case 'd': path = optarg; break;
		case 'o': base = strtoull(optarg, NULL, 0) << 20; break;
		case 'n': npages = strtoull(optarg, NULL, 0); break;
		case 't': timeout = atoi(optarg); break;
		default: return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	kfd = kmsg_open_at_end();
	setup(path);

	if (!strcmp(cmd, "pfns"))
		return cmd_pfns();
	if (strcmp(cmd, "node") || (role != 'A' && role != 'B') || !run_id) {
		fprintf(stderr, "node needs -r A|B and -i RUN_ID (non-zero)\n");
		return 2;
	}
	dev = dax_map_shared(dax_fd, base, 2UL << 20);
	if (!dev)
		die("mmap(MAP_SHARED)");
	if (role == 'A')
		ret = role_a((struct mailbox *)(dev + (1UL << 20)), dev, run_id, timeout);
	else
		ret = role_b((struct mailbox *)(dev + (1UL << 20)), dev, run_id, timeout);
	bad = kmsg_count_bad(kfd, true);
	printf("# %c: kernel log WARNING/BUG/Oops lines: %d\n", role, bad);
	return ret || bad;
}
