// SPDX-License-Identifier: GPL-2.0
/*
 * mm-template selftest (TAP).  Run as root in a guest where DAX (default
 * /dev/dax0.0) is a device-dax instance bound to device_dax.
 *
 *   mmt_test [-d /dev/daxX.Y] [-o OFFSET_MIB]
 *
 * The test writes its template contents into 1 MiB of the device at
 * OFFSET_MIB (default 0; a multiple of the device alignment), through a
 * MAP_SHARED mapping, and then checks:
 *  (p) MAP_PRIVATE mappings of device-dax (the device-dax patch);
 *  (a) two processes reading a template map the very same device pages
 *      (PFNs from /proc/PID/pagemap, against the device's physical range);
 *  (b) a write copies the page: invisible to other processes and to the
 *      device; also for forced writes through /proc/PID/mem;
 *  (c) fork, munmap, mremap, detach and exit keep the VMA count right and
 *      it returns to zero, after which the template can be removed;
 *  (d) every misuse is refused with the documented errno;
 *  (e) the statistics count shared mappings and copies exactly, for lazy
 *      and pre-populated attaches;
 * and that the kernel logged no WARNING/BUG meanwhile.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/prctl.h>
#include "mmt_util.h"

#define T1 "t1"

/*
 * template t1: A = A1 + A2 (adjacent in VA and in the device), B (read
 * only), C (same device pages as A1).  Template VMAs are VM_DONTEXPAND,
 * which the VMA code never merges: one VMA per area.
 */
#define VA_A	0x500000000000UL
#define VA_B	0x500000100000UL
#define VA_C	0x500000200000UL
#define NP_A	64
#define NP_B	16
#define NP_C	8
#define NP_ALL	(NP_A + NP_B + NP_C)
#define OFF_B	(NP_A * PAGE)
#define NVMA	4		/* VMAs per attached process */

static struct dax_dev dax;
static uint64_t base;		/* device offset of the test's data */
static int dax_fd, mfd;
static uint8_t *dev;		/* MAP_SHARED view of [base, base + 2 MiB) */

static struct mmt_area t1_areas[] = {
	{ .addr = VA_A, .len = 32 * PAGE, .offset = 0,
	  .prot = PROT_READ | PROT_WRITE },
	{ .addr = VA_A + 32 * PAGE, .len = 32 * PAGE, .offset = 32 * PAGE,
	  .prot = PROT_READ | PROT_WRITE },
	{ .addr = VA_B, .len = NP_B * PAGE, .offset = OFF_B,
	  .prot = PROT_READ },
	{ .addr = VA_C, .len = NP_C * PAGE, .offset = 0,
	  .prot = PROT_READ | PROT_WRITE },
};

/* i-th page of the template: its address and device page (from base) */
static unsigned long tpage_va(int i)
{
	if (i < NP_A)
		return VA_A + i * PAGE;
	if (i < NP_A + NP_B)
		return VA_B + (i - NP_A) * PAGE;
	return VA_C + (i - NP_A - NP_B) * PAGE;
}

static uint64_t tpage_dev(int i)
{
	if (i < NP_A)
		return i;
	if (i < NP_A + NP_B)
		return NP_A + (i - NP_A);
	return i - NP_A - NP_B;
}

static int register_t1(const char *name)
{
	struct mmt_area a[4];
	int i;

	memcpy(a, t1_areas, sizeof(a));
	for (i = 0; i < 4; i++)
		a[i].offset += base;
	return mmt_register(mfd, name, dax_fd, a, 4);
}

static long nr_vmas(const char *name)
{
	struct mmt_info i;

	if (mmt_info(mfd, name, &i, 0))
		return -errno;
	return i.nr_vmas;
}

static void stats(const char *name, uint64_t *shared, uint64_t *cow,
		  bool reset)
{
	struct mmt_info i;

	if (mmt_info(mfd, name, &i, reset ? MMT_INFO_RESET_STATS : 0))
		die("MMT_IOC_INFO");
	*shared = i.shared_maps;
	*cow = i.cow_copies;
}

/* ---- child processes driven through pipes ---------------------------- */

struct cmd {
	int op;
	int val;
	unsigned long addr;
	unsigned long len;
};

struct child {
	pid_t pid;
	int to, from;
};

static const char *child_tmpl = T1;

static long child_fork_test(void);

static void child_loop(int in, int out)
{
	for (;;) {
		struct cmd c;
		long r = 0;
		unsigned long i;

		if (read(in, &c, sizeof(c)) != sizeof(c))
			_exit(0);
		switch (c.op) {
		case 'A':	/* attach */
			r = mmt_attach(mfd, child_tmpl, c.val) ? -errno : 0;
			break;
		case 'D':	/* detach */
			r = mmt_detach(mfd, child_tmpl) ? -errno : 0;
			break;
		case 'R':	/* read every template page, check contents */
			for (i = 0; i < NP_ALL; i++)
				if (!check_page((void *)tpage_va(i), 1,
						tpage_dev(i)))
					r++;
			break;
		case 'r':	/* read one page: check template contents */
			r = !check_page((void *)c.addr, 1, c.len);
			break;
		case 'W':	/* write a page */
			memset((void *)c.addr, c.val, PAGE);
			break;
		case 'V':	/* page all @val? */
			for (i = 0; i < PAGE; i++)
				if (((volatile uint8_t *)c.addr)[i] != c.val)
					r = 1;
			break;
		case 'Q':	/* template page @len, bytes 100..115 = @val */
			for (i = 0; i < PAGE; i++) {
				uint8_t want = (i >= 100 && i < 116) ? c.val :
					pattern(1, c.len, i);

				if (((volatile uint8_t *)c.addr)[i] != want)
					r = 1;
			}
			break;
		case 'Z':
			r = madvise((void *)c.addr, c.len, MADV_DONTNEED) ?
				-errno : 0;
			break;
		case 'U':
			r = munmap((void *)c.addr, c.len) ? -errno : 0;
			break;
		case 'F':
			r = child_fork_test();
			break;
		case 'X':
			_exit(0);
		}
		if (write(out, &r, sizeof(r)) != sizeof(r))
			_exit(1);
	}
}

static struct child child_start(void)
{
	int p1[2], p2[2];
	struct child c;

	if (pipe(p1) || pipe(p2))
		die("pipe");
	c.pid = fork();
	if (c.pid < 0)
		die("fork");
	if (!c.pid) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(p1[1]);
		close(p2[0]);
		child_loop(p1[0], p2[1]);
	}
	close(p1[0]);
	close(p2[1]);
	c.to = p1[1];
	c.from = p2[0];
	return c;
}

static long child_do(struct child *c, int op, unsigned long addr,
		     unsigned long len, int val)
{
	struct cmd cmd = { .op = op, .val = val, .addr = addr, .len = len };
	long r;

	if (write(c->to, &cmd, sizeof(cmd)) != sizeof(cmd))
		return -1000;
	if (read(c->from, &r, sizeof(r)) != sizeof(r))
		return -1001;	/* the child died */
	return r;
}

static int child_end(struct child *c)
{
	int status;

	child_do(c, 'X', 0, 0, 0);
	close(c->to);
	close(c->from);
	waitpid(c->pid, &status, 0);
	return status;
}

/*
 * In an attached child that wrote 0xAA to A page 5: fork, check what the
 * grandchild inherits, let it copy A page 0, and check the VMA counts.
 */
static long child_fork_test(void)
{
	long before = nr_vmas(child_tmpl);
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return -errno;
	if (!pid) {
		int bad = 0;
		uint8_t *a5 = (uint8_t *)(VA_A + 5 * PAGE);

		/* the child's private copy is inherited ... */
		if (a5[0] != 0xAA || a5[PAGE - 1] != 0xAA)
			bad |= 1;
		/* ... and template pages are still template pages */
		if (!check_page((void *)VA_A, 1, 0))
			bad |= 2;
		/* NVMA more VMAs while the grandchild lives */
		if (nr_vmas(child_tmpl) != before + NVMA)
			bad |= 4;
		memset((void *)VA_A, 0x55, PAGE);
		if (dax_pfn_in(&dax, pfn_at(0, VA_A)))
			bad |= 8;
		_exit(bad);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -2000;
	if (WEXITSTATUS(status))
		return WEXITSTATUS(status);
	/* the grandchild's write is invisible here; the VMAs are gone */
	if (!check_page((void *)VA_A, 1, 0))
		return 16;
	if (nr_vmas(child_tmpl) != before)
		return 32;
	return 0;
}

/* ---- (p) MAP_PRIVATE of device-dax ------------------------------------ */

static void test_private_mapping(void)
{
	uint8_t *p;
	uint64_t pfn;

	p = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, dax_fd,
		 base);
	TAP_OK(p != MAP_FAILED, "device-dax: mmap(MAP_PRIVATE) succeeds");
	if (p == MAP_FAILED)
		return;

	TAP_OK(check_page(p, 1, 0), "device-dax private: read sees the device contents");
	pfn = pfn_at(0, (unsigned long)p);
	TAP_OK(pfn == dax_pfn(&dax, base),
	       "device-dax private: read maps the device page itself (pfn %#" PRIx64 ", want %#" PRIx64 ")",
	       pfn, dax_pfn(&dax, base));

	/* write to a never-touched page: do_cow_fault() path */
	memset(p + PAGE, 0x11, PAGE);
	pfn = pfn_at(0, (unsigned long)p + PAGE);
	TAP_OK(p[PAGE] == 0x11 && pfn && !dax_pfn_in(&dax, pfn),
	       "device-dax private: first-touch write gets a private page (pfn %#" PRIx64 ")", pfn);
	TAP_OK(check_page(dev + PAGE, 1, 1),
	       "device-dax private: first-touch write leaves the device unchanged");

	/* read, then write: write-protect fault on the device PTE */
	TAP_OK(check_page(p + 2 * PAGE, 1, 2) &&
	       pfn_at(0, (unsigned long)p + 2 * PAGE) == dax_pfn(&dax, base + 2 * PAGE),
	       "device-dax private: read maps device page 2");
	memset(p + 2 * PAGE, 0x22, PAGE);
	pfn = pfn_at(0, (unsigned long)p + 2 * PAGE);
	TAP_OK(p[2 * PAGE + 7] == 0x22 && pfn && !dax_pfn_in(&dax, pfn),
	       "device-dax private: write after read copies the page");
	TAP_OK(check_page(dev + 2 * PAGE, 1, 2),
	       "device-dax private: write after read leaves the device unchanged");
	munmap(p, 8 * PAGE);

	/* page-aligned (not device-aligned) offset and length are fine */
	p = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, dax_fd, base + 3 * PAGE);
	TAP_OK(p != MAP_FAILED && check_page(p, 1, 3),
	       "device-dax private: 4 KiB mapping at a 4 KiB offset works");
	if (p != MAP_FAILED)
		munmap(p, PAGE);

	/* shared mappings still require the device alignment */
	if (dax.align > PAGE) {
		p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, dax_fd, base);
		TAP_OK(p == MAP_FAILED && errno == EINVAL,
		       "device-dax shared: unaligned length still refused (EINVAL)");
		if (p != MAP_FAILED)
			munmap(p, PAGE);
	}
}

/* ---- (a), (b), (c), (e) ------------------------------------------------ */

static void test_two_processes(void)
{
	struct child c1, c2;
	uint64_t shared, cow, pfn1, pfn2;
	int i, same = 0, expected = 0, status;
	long r;
	struct mmt_info info;
	int memfd;
	char path[64];
	long n;

	stats(T1, &shared, &cow, true);
	c1 = child_start();
	c2 = child_start();

	r = child_do(&c1, 'A', 0, 0, 0);
	TAP_OK(r == 0, "attach t1 in process 1 (%ld)", r);
	r = child_do(&c2, 'A', 0, 0, 0);
	TAP_OK(r == 0, "attach t1 in process 2 (%ld)", r);
	r = nr_vmas(T1);
	TAP_OK(r == 2 * NVMA,
	       "one VMA per area, %d per process: nr_vmas %ld (want %d)", NVMA, r, 2 * NVMA);

	/* lazy: nothing mapped yet */
	TAP_OK(pfn_at(c1.pid, VA_A) == 0, "lazy attach: no PTE before the first read");

	TAP_OK(child_do(&c1, 'R', 0, 0, 0) == 0, "process 1 reads the template contents");
	TAP_OK(child_do(&c2, 'R', 0, 0, 0) == 0, "process 2 reads the template contents");
	for (i = 0; i < NP_ALL; i++) {
		pfn1 = pfn_at(c1.pid, tpage_va(i));
		pfn2 = pfn_at(c2.pid, tpage_va(i));
		if (pfn1 && pfn1 == pfn2)
			same++;
		if (pfn1 == dax_pfn(&dax, base + tpage_dev(i) * PAGE))
			expected++;
	}
	TAP_OK(same == NP_ALL, "(a) both processes map the same physical page for all %d pages (%d)",
	       NP_ALL, same);
	TAP_OK(expected == NP_ALL,
	       "(a) each PFN is the device page at the area's offset, inside %s [%#" PRIx64 "-%#" PRIx64 "] (%d)",
	       dax.name, dax.start, dax.end, expected);
	TAP_OK(pfn_at(c1.pid, VA_A) == pfn_at(c1.pid, VA_C),
	       "(a) areas A and C share device offset 0: same PFN at both addresses");

	stats(T1, &shared, &cow, false);
	TAP_OK(shared == 2 * NP_ALL && cow == 0,
	       "(e) lazy: shared_maps %" PRIu64 " (want %d), cow_copies %" PRIu64 " (want 0)",
	       shared, 2 * NP_ALL, cow);

	/* (b) process 1 writes a page it has mapped read-only */
	child_do(&c1, 'W', VA_A + 5 * PAGE, 0, 0xAA);
	pfn1 = pfn_at(c1.pid, VA_A + 5 * PAGE);
	TAP_OK(pfn1 && !dax_pfn_in(&dax, pfn1) &&
	       child_do(&c1, 'V', VA_A + 5 * PAGE, 0, 0xAA) == 0,
	       "(b) write in process 1: private copy (pfn %#" PRIx64 ")", pfn1);
	TAP_OK(pfn_at(c2.pid, VA_A + 5 * PAGE) == dax_pfn(&dax, base + 5 * PAGE) &&
	       child_do(&c2, 'r', VA_A + 5 * PAGE, 5, 0) == 0,
	       "(b) process 2 still maps and reads the template page");
	TAP_OK(check_page(dev + 5 * PAGE, 1, 5),
	       "(b) device page unchanged (read through MAP_SHARED)");
	stats(T1, &shared, &cow, false);
	TAP_OK(cow == 1 && shared == 2 * NP_ALL,
	       "(e) write to a mapped page: cow_copies %" PRIu64 " (want 1), shared_maps %" PRIu64,
	       cow, shared);

	/* (b) process 2 writes a page that is not mapped (do_cow_fault) */
	TAP_OK(child_do(&c2, 'Z', VA_A + 10 * PAGE, PAGE, 0) == 0 &&
	       pfn_at(c2.pid, VA_A + 10 * PAGE) == 0,
	       "MADV_DONTNEED drops the PTE in process 2");
	child_do(&c2, 'W', VA_A + 10 * PAGE, 0, 0xBB);
	pfn2 = pfn_at(c2.pid, VA_A + 10 * PAGE);
	TAP_OK(pfn2 && !dax_pfn_in(&dax, pfn2) &&
	       child_do(&c2, 'V', VA_A + 10 * PAGE, 0, 0xBB) == 0,
	       "(b) first-touch write in process 2: private copy");
	TAP_OK(child_do(&c1, 'r', VA_A + 10 * PAGE, 10, 0) == 0 &&
	       check_page(dev + 10 * PAGE, 1, 10),
	       "(b) invisible to process 1 and to the device");
	stats(T1, &shared, &cow, false);
	TAP_OK(cow == 2, "(e) first-touch write counted: cow_copies %" PRIu64 " (want 2)", cow);

	/* discarding a private copy re-maps the template page */
	child_do(&c1, 'Z', VA_A + 5 * PAGE, PAGE, 0);
	TAP_OK(child_do(&c1, 'r', VA_A + 5 * PAGE, 5, 0) == 0 &&
	       pfn_at(c1.pid, VA_A + 5 * PAGE) == dax_pfn(&dax, base + 5 * PAGE),
	       "MADV_DONTNEED of a copied page: next read maps the template page again");
	child_do(&c1, 'W', VA_A + 5 * PAGE, 0, 0xAA);
	stats(T1, &shared, &cow, false);
	TAP_OK(shared == 2 * NP_ALL + 1 && cow == 3,
	       "(e) shared_maps %" PRIu64 " (want %d), cow_copies %" PRIu64 " (want 3)",
	       shared, 2 * NP_ALL + 1, cow);

	/* (b) forced write (ptrace / /proc/PID/mem) into read-only area B */
	snprintf(path, sizeof(path), "/proc/%d/mem", c2.pid);
	memfd = open(path, O_RDWR);
	if (memfd >= 0) {
		uint8_t buf[16];

		memset(buf, 0xCC, sizeof(buf));
		r = pwrite(memfd, buf, sizeof(buf), VA_B + 100);
		close(memfd);
		TAP_OK(r == sizeof(buf) && child_do(&c2, 'Q', VA_B, NP_A, 0xCC) == 0,
		       "(b) forced 16-byte write to read-only area B through /proc/PID/mem: private copy of the whole template page plus the 16 bytes");
		TAP_OK(check_page(dev + OFF_B, 1, NP_A) &&
		       child_do(&c1, 'r', VA_B, NP_A, 0) == 0,
		       "(b) forced write invisible to the device and to process 1");
		stats(T1, &shared, &cow, false);
		TAP_OK(cow == 4, "(e) forced write counted: cow_copies %" PRIu64 " (want 4)", cow);
	} else {
		tap_result(false, "open %s: %s", path, strerror(errno));
	}

	/* (c) fork */
	r = child_do(&c1, 'F', 0, 0, 0);
	TAP_OK(r == 0, "(c) fork: child inherits copies and template pages, its write is private, its VMAs counted and released (%ld)", r);

	/* (c) munmap: split then unmap */
	r = child_do(&c2, 'U', VA_A + 8 * PAGE, 8 * PAGE, 0);
	n = nr_vmas(T1);
	TAP_OK(r == 0 && n == 2 * NVMA + 1,
	       "(c) munmap in the middle of A1 splits it: nr_vmas %ld (want %d)", n, 2 * NVMA + 1);
	TAP_ERRNO(mmt_remove(mfd, T1), EBUSY, "(d) remove while attached: EBUSY");
	child_do(&c2, 'U', VA_A, NP_A * PAGE, 0);
	child_do(&c2, 'U', VA_B, NP_B * PAGE, 0);
	child_do(&c2, 'U', VA_C, NP_C * PAGE, 0);
	n = nr_vmas(T1);
	TAP_OK(n == NVMA, "(c) munmap of everything in process 2: nr_vmas %ld (want %d)", n, NVMA);
	r = child_do(&c2, 'D', 0, 0, 0);
	TAP_OK(r == -EINVAL, "(d) detach when not attached: EINVAL (%ld)", r);
	r = child_do(&c2, 'A', 0, 0, 0);
	n = nr_vmas(T1);
	TAP_OK(r == 0 && n == 2 * NVMA,
	       "(c) re-attach after munmap works (%ld, nr_vmas %ld)", r, n);
	r = child_do(&c2, 'D', 0, 0, 0);
	n = nr_vmas(T1);
	TAP_OK(r == 0 && n == NVMA && pfn_at(c2.pid, VA_A) == 0,
	       "(c) detach unmaps the template (%ld, nr_vmas %ld)", r, n);

	status = child_end(&c2);
	/* (c) exit with the template attached */
	status = child_end(&c1);
	n = nr_vmas(T1);
	TAP_OK(WIFEXITED(status) && n == 0,
	       "(c) exit releases the VMAs: nr_vmas %ld (want 0)", n);
	TAP_OK(mmt_info(mfd, T1, &info, 0) == 0 && info.nr_attach >= 3,
	       "info: nr_attach %" PRIu64, (uint64_t)info.nr_attach);
}

static void test_populate(void)
{
	struct child c3, c4;
	uint64_t shared, cow;
	int i, present = 0, status;
	long r;

	stats(T1, &shared, &cow, true);
	c3 = child_start();
	r = child_do(&c3, 'A', 0, 0, MMT_ATTACH_POPULATE);
	TAP_OK(r == 0, "attach with MMT_ATTACH_POPULATE (%ld)", r);
	for (i = 0; i < NP_ALL; i++)
		if (pfn_at(c3.pid, tpage_va(i)) ==
		    dax_pfn(&dax, base + tpage_dev(i) * PAGE))
			present++;
	TAP_OK(present == NP_ALL,
	       "(e) populate: all %d pages mapped read-only to the device before any access (%d)",
	       NP_ALL, present);
	stats(T1, &shared, &cow, false);
	TAP_OK(shared == NP_ALL && cow == 0,
	       "(e) populate: shared_maps %" PRIu64 " (want %d), cow_copies %" PRIu64 " (want 0)",
	       shared, NP_ALL, cow);
	TAP_OK(child_do(&c3, 'R', 0, 0, 0) == 0, "populated template reads right");
	child_do(&c3, 'W', VA_C, 0, 0x77);
	stats(T1, &shared, &cow, false);
	TAP_OK(shared == NP_ALL && cow == 1,
	       "(e) populate: reads do not fault, a write copies: shared_maps %" PRIu64 ", cow_copies %" PRIu64,
	       shared, cow);
	TAP_OK(check_page(dev, 1, 0) && pfn_at(c3.pid, VA_A) == dax_pfn(&dax, base),
	       "(b) write to area C (device offset 0) leaves area A and the device alone");
	status = child_end(&c3);

	/* write to a read-only area: SIGSEGV, device untouched */
	c4 = child_start();
	child_do(&c4, 'A', 0, 0, 0);
	r = child_do(&c4, 'W', VA_B, 0, 0x99);
	waitpid(c4.pid, &status, 0);
	TAP_OK(r == -1001 && WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV &&
	       check_page(dev + OFF_B, 1, NP_A),
	       "write to read-only area B: SIGSEGV, device unchanged");
	close(c4.to);
	close(c4.from);

	c4 = child_start();
	stats(T1, &shared, &cow, true);
	child_do(&c4, 'A', 0, 0, 0);
	for (i = 0; i < 10; i++)
		child_do(&c4, 'r', tpage_va(i), tpage_dev(i), 0);
	stats(T1, &shared, &cow, false);
	TAP_OK(shared == 10 && cow == 0 && pfn_at(c4.pid, tpage_va(11)) == 0,
	       "(e) lazy: 10 reads = 10 shared_maps (%" PRIu64 "), the rest unmapped", shared);
	child_end(&c4);
	r = nr_vmas(T1);
	TAP_OK(r == 0, "all processes gone: nr_vmas 0 (%ld)", r);
}

/* mremap / mprotect of template VMAs, in this process */
static void test_vma_ops(void)
{
	void *p;
	long n;
	int r;

	TAP_OK(mmt_attach(mfd, T1, 0) == 0, "attach t1 in the test process");
	TAP_ERRNO(mmt_attach(mfd, T1, 0), EBUSY, "(d) attach twice to the same process: EBUSY");
	p = mremap((void *)VA_B, NP_B * PAGE, 2 * NP_B * PAGE, 0);
	TAP_OK(p == MAP_FAILED && errno == EFAULT,
	       "(d) mremap cannot grow a template VMA (EFAULT): no access past the area");
	p = mremap((void *)VA_C, NP_C * PAGE, NP_C * PAGE,
		   MREMAP_MAYMOVE | MREMAP_FIXED, (void *)(VA_C + 0x100000));
	n = nr_vmas(T1);
	TAP_OK(p == (void *)(VA_C + 0x100000) && check_page(p, 1, 0) && n == NVMA,
	       "mremap moves a template VMA (contents kept, nr_vmas %ld)", n);
	r = mprotect((void *)VA_B, PAGE, PROT_READ | PROT_WRITE);
	n = nr_vmas(T1);
	TAP_OK(r == 0 && n == NVMA + 1,
	       "mprotect(PROT_WRITE) on part of read-only area B splits it (%d, nr_vmas %ld)",
	       r, n);
	memset((void *)VA_B, 0x42, PAGE);
	TAP_OK(check_page(dev + OFF_B, 1, NP_A),
	       "write after mprotect copies; device unchanged");
	r = mmt_detach(mfd, T1);
	n = nr_vmas(T1);
	TAP_OK(r == 0 && n == 0,
	       "detach unmaps moved and split VMAs too (%d, nr_vmas %ld)", r, n);
}

/* ---- (d) misuse ------------------------------------------------------- */

static int reg1(const char *name, int fd, uint64_t addr, uint64_t len,
		uint64_t off, uint32_t prot, uint32_t flags)
{
	struct mmt_area a = { .addr = addr, .len = len, .offset = off,
			      .prot = prot, .flags = flags };

	return mmt_register(mfd, name, fd, &a, 1);
}

static void test_misuse(void)
{
	const uint64_t V = 0x510000000000UL;
	const int RW = PROT_READ | PROT_WRITE;
	struct mmt_area two[2];
	struct mmt_register r;
	struct {
		struct mmt_register r;
		uint64_t more;
	} big;
	char longname[MMT_NAME_MAX];
	int fd, status;
	pid_t pid;
	void *obst;

	/* areas */
	TAP_ERRNO(reg1("bad", dax_fd, V + 1, PAGE, base, RW, 0), EINVAL, "(d) unaligned address: EINVAL");
	TAP_ERRNO(reg1("bad", dax_fd, V, PAGE + 1, base, RW, 0), EINVAL, "(d) unaligned length: EINVAL");
	TAP_ERRNO(reg1("bad", dax_fd, V, PAGE, base + 512, RW, 0), EINVAL, "(d) unaligned offset: EINVAL");
	TAP_ERRNO(reg1("bad", dax_fd, V, 0, base, RW, 0), EINVAL, "(d) zero length: EINVAL");
	TAP_ERRNO(reg1("bad", dax_fd, 0, PAGE, base, RW, 0), EINVAL, "(d) address 0: EINVAL");
	TAP_ERRNO(reg1("bad", dax_fd, -PAGE, 2 * PAGE, base, RW, 0), EINVAL, "(d) address range wraps: EINVAL");
	TAP_ERRNO(reg1("bad", dax_fd, 1UL << 62, PAGE, base, RW, 0), EINVAL, "(d) address above the user address space: EINVAL");
	TAP_ERRNO(reg1("bad", dax_fd, V, PAGE, base, 0x100, 0), EINVAL, "(d) unknown protection bit: EINVAL");
	TAP_ERRNO(reg1("bad", dax_fd, V, PAGE, base, RW, 1), EINVAL, "(d) area flags not zero: EINVAL");
	TAP_ERRNO(reg1("bad", dax_fd, V, 2 * PAGE, dax.size - PAGE, RW, 0), ERANGE, "(d) offset + len past the device: ERANGE");
	TAP_ERRNO(reg1("bad", dax_fd, V, 2 * PAGE, -PAGE, RW, 0), ERANGE, "(d) offset + len wraps: ERANGE");
	two[0] = (struct mmt_area){ .addr = V, .len = 4 * PAGE, .offset = base, .prot = RW };
	two[1] = (struct mmt_area){ .addr = V + 3 * PAGE, .len = 4 * PAGE, .offset = base, .prot = RW };
	TAP_ERRNO(mmt_register(mfd, "bad", dax_fd, two, 2), EINVAL, "(d) overlapping areas: EINVAL");
	two[1].addr = V - 2 * PAGE;	/* unsorted, overlapping from below */
	TAP_ERRNO(mmt_register(mfd, "bad", dax_fd, two, 2), EINVAL, "(d) overlapping areas (unsorted): EINVAL");
	TAP_ERRNO(mmt_register(mfd, "bad", dax_fd, two, 0), EINVAL, "(d) no areas: EINVAL");
	TAP_ERRNO(mmt_register(mfd, "bad", dax_fd, two, MMT_MAX_AREAS + 1), EINVAL, "(d) too many areas: EINVAL");
	TAP_ERRNO(mmt_register(mfd, "bad", dax_fd, (void *)8, 1), EFAULT, "(d) bad areas pointer: EFAULT");

	/* file descriptors */
	TAP_ERRNO(reg1("bad", -1, V, PAGE, base, RW, 0), EBADF, "(d) fd -1: EBADF");
	TAP_ERRNO(reg1("bad", 1000, V, PAGE, base, RW, 0), EBADF, "(d) closed fd: EBADF");
	fd = open("/dev/null", O_RDWR);
	TAP_ERRNO(reg1("bad", fd, V, PAGE, base, RW, 0), ENOTTY, "(d) fd of /dev/null: ENOTTY");
	close(fd);
	fd = open("/proc/self/status", O_RDONLY);
	TAP_ERRNO(reg1("bad", fd, V, PAGE, base, RW, 0), ENOTTY, "(d) fd of a regular file: ENOTTY");
	close(fd);
	TAP_ERRNO(reg1("bad", mfd, V, PAGE, base, RW, 0), ENOTTY, "(d) fd of /dev/mm_template: ENOTTY");
	fd = open(dax.path, O_WRONLY);
	TAP_ERRNO(reg1("bad", fd, V, PAGE, base, RW, 0), EBADF, "(d) device-dax opened write-only: EBADF");
	close(fd);
	fd = open(dax.path, O_PATH);
	TAP_ERRNO(reg1("bad", fd, V, PAGE, base, RW, 0), EBADF, "(d) O_PATH fd: EBADF");
	close(fd);

	/* names */
	TAP_ERRNO(register_t1(T1), EEXIST, "(d) duplicate name: EEXIST");
	TAP_ERRNO(reg1("", dax_fd, V, PAGE, base, RW, 0), EINVAL, "(d) empty name: EINVAL");
	TAP_ERRNO(reg1("a/b", dax_fd, V, PAGE, base, RW, 0), EINVAL, "(d) name with '/': EINVAL");
	TAP_ERRNO(reg1("a b", dax_fd, V, PAGE, base, RW, 0), EINVAL, "(d) name with a space: EINVAL");
	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.dax_fd = dax_fd;
	r.nr_areas = 1;
	r.areas = (uintptr_t)two;
	memset(r.name, 'x', sizeof(r.name));
	TAP_ERRNO(ioctl(mfd, MMT_IOC_REGISTER, &r), EINVAL, "(d) name not NUL-terminated: EINVAL");

	/* structure size, flags, reserved fields */
	two[0] = (struct mmt_area){ .addr = V, .len = PAGE, .offset = base, .prot = RW };
	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.dax_fd = dax_fd;
	r.nr_areas = 1;
	r.areas = (uintptr_t)two;
	strcpy(r.name, "ok1");
	r.size = 8;
	TAP_ERRNO(ioctl(mfd, MMT_IOC_REGISTER, &r), EINVAL, "(d) size smaller than version 0: EINVAL");
	r.size = sizeof(r);
	r.flags = 1;
	TAP_ERRNO(ioctl(mfd, MMT_IOC_REGISTER, &r), EINVAL, "(d) unknown flags: EINVAL");
	r.flags = 0;
	r.__reserved[2] = 1;
	TAP_ERRNO(ioctl(mfd, MMT_IOC_REGISTER, &r), EINVAL, "(d) reserved field not zero: EINVAL");
	r.__reserved[2] = 0;
	r.__reserved0 = 1;
	TAP_ERRNO(ioctl(mfd, MMT_IOC_REGISTER, &r), EINVAL, "(d) reserved0 not zero: EINVAL");
	r.__reserved0 = 0;
	big.r = r;
	big.r.size = sizeof(big);
	big.more = 1;
	TAP_ERRNO(ioctl(mfd, MMT_IOC_REGISTER, &big), E2BIG, "(d) larger struct with unknown non-zero bytes: E2BIG");
	big.more = 0;
	status = ioctl(mfd, MMT_IOC_REGISTER, &big);
	TAP_OK(status == 0 && big.r.id > 0,
	       "larger struct with zero tail accepted (forward compatible), id %u", big.r.id);
	TAP_OK(mmt_remove(mfd, "ok1") == 0, "remove it");

	/* EPERM without CAP_SYS_ADMIN (fd kept open across setuid) */
	pid = fork();
	if (!pid) {
		if (setgid(65534) || setuid(65534))
			_exit(3);
		if (reg1("np", dax_fd, V, PAGE, base, RW, 0) == 0)
			_exit(1);
		if (errno != EPERM)
			_exit(2);
		if (mmt_remove(mfd, T1) == 0 || errno != EPERM)
			_exit(4);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	TAP_OK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	       "(d) register/remove without CAP_SYS_ADMIN: EPERM (%d)", WEXITSTATUS(status));

	/* attach / detach / remove / info */
	TAP_ERRNO(mmt_attach(mfd, "nosuch", 0), ENOENT, "(d) attach unknown name: ENOENT");
	TAP_ERRNO(mmt_attach(mfd, T1, 0x80), EINVAL, "(d) attach with unknown flag: EINVAL");
	TAP_ERRNO(mmt_detach(mfd, "nosuch"), ENOENT, "(d) detach unknown name: ENOENT");
	TAP_ERRNO(mmt_remove(mfd, "nosuch"), ENOENT, "(d) remove unknown name: ENOENT");
	{
		struct mmt_info i;

		TAP_ERRNO(mmt_info(mfd, "nosuch", &i, 0), ENOENT, "(d) info unknown name: ENOENT");
		TAP_ERRNO(mmt_info(mfd, T1, &i, 0x10), EINVAL, "(d) info with unknown flag: EINVAL");
	}
	memset(longname, 0, sizeof(longname));
	TAP_ERRNO(ioctl(mfd, _IO(MMT_IOC_MAGIC, 0x0f)), ENOTTY, "(d) unknown ioctl: ENOTTY");

	/* an existing mapping in the way of area B: EEXIST, nothing mapped */
	obst = mmap((void *)(VA_B + 4 * PAGE), PAGE, PROT_READ,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (obst == MAP_FAILED)
		die("mmap obstacle");
	TAP_ERRNO(mmt_attach(mfd, T1, 0), EEXIST, "(d) attach over an existing mapping: EEXIST");
	TAP_OK(nr_vmas(T1) == 0 &&
	       mmap((void *)VA_A, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS |
		    MAP_FIXED_NOREPLACE, -1, 0) == (void *)VA_A,
	       "(d) failed attach mapped nothing (existing mapping untouched)");
	munmap((void *)VA_A, PAGE);
	munmap(obst, PAGE);
}

static void test_list_and_remove(void)
{
	char names[4][MMT_NAME_MAX];
	struct mmt_list l;
	struct mmt_info info;
	struct mmt_area areas[8];
	int i, found = 0;

	TAP_OK(register_t1("t2") == 0, "register a second template over the same device pages");
	memset(&l, 0, sizeof(l));
	l.size = sizeof(l);
	l.names = (uintptr_t)names;
	l.cap = 4;
	TAP_OK(ioctl(mfd, MMT_IOC_LIST, &l) == 0, "list");
	for (i = 0; i < (int)l.count && i < 4; i++)
		if (!strcmp(names[i], T1) || !strcmp(names[i], "t2"))
			found++;
	TAP_OK(l.count == 2 && found == 2, "list returns t1 and t2 (count %u)", l.count);
	l.cap = 1;
	TAP_OK(ioctl(mfd, MMT_IOC_LIST, &l) == 0 && l.count == 2,
	       "list with a small buffer still reports the count");

	memset(&info, 0, sizeof(info));
	info.size = sizeof(info);
	strcpy(info.name, T1);
	info.areas = (uintptr_t)areas;
	info.areas_cap = 8;
	TAP_OK(ioctl(mfd, MMT_IOC_INFO, &info) == 0 && info.nr_areas == 4 &&
	       info.total_len == NP_ALL * PAGE && info.dev_size == dax.size &&
	       areas[0].addr == VA_A && areas[3].addr == VA_C &&
	       areas[2].offset == base + OFF_B,
	       "info: areas (sorted), total_len, dev_size");

	TAP_OK(mmt_remove(mfd, "t2") == 0 && mmt_remove(mfd, T1) == 0,
	       "remove both once nothing maps them");
	l.cap = 4;
	TAP_OK(ioctl(mfd, MMT_IOC_LIST, &l) == 0 && l.count == 0, "list is empty");
	TAP_ERRNO(mmt_attach(mfd, T1, 0), ENOENT, "(d) attach a removed template: ENOENT");
}

int main(int argc, char **argv)
{
	const char *path = "/dev/dax0.0";
	struct mmt_info info;
	int opt, kfd, bad;
	uint64_t i;

	while ((opt = getopt(argc, argv, "d:o:")) != -1) {
		if (opt == 'd')
			path = optarg;
		else if (opt == 'o')
			base = strtoull(optarg, NULL, 0) << 20;
		else {
			fprintf(stderr, "usage: %s [-d /dev/daxX.Y] [-o OFFSET_MIB]\n", argv[0]);
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	kfd = kmsg_open_at_end();

	if (dax_dev_init(&dax, path))
		die("cannot find the device-dax instance in sysfs or /proc/iomem");
	tap_diag("%s: size %#" PRIx64 " align %#" PRIx64 " phys %#" PRIx64 "-%#" PRIx64 ", test data at offset %#" PRIx64,
		 dax.path, dax.size, dax.align, dax.start, dax.end, base);
	if (base % (dax.align > 2UL << 20 ? dax.align : 2UL << 20) ||
	    base + (2UL << 20) > dax.size) {
		errno = EINVAL;
		die("bad offset");
	}
	dax_fd = open(path, O_RDWR | O_CLOEXEC);
	if (dax_fd < 0)
		die(path);
	mfd = mmt_open();
	if (mfd < 0)
		die("/dev/mm_template");
	dev = dax_map_shared(dax_fd, base, 2UL << 20);
	if (!dev)
		die("mmap(MAP_SHARED) of the device");
	for (i = 0; i < 256; i++)
		fill_page(dev + i * PAGE, 1, i);

	test_private_mapping();

	TAP_OK(register_t1(T1) == 0, "register t1 (4 areas, one read-only)");
	TAP_OK(mmt_info(mfd, T1, &info, 0) == 0 && info.nr_areas == 4 &&
	       info.nr_vmas == 0 && info.id > 0, "info of t1");

	test_two_processes();
	test_populate();
	test_vma_ops();
	test_misuse();
	test_list_and_remove();

	for (i = 0; i < 256; i++)
		if (!check_page(dev + i * PAGE, 1, i))
			break;
	TAP_OK(i == 256, "(b) template data in the device never changed (%" PRIu64 " pages intact)", i);

	bad = kmsg_count_bad(kfd, true);
	TAP_OK(bad == 0, "(d) no WARNING/BUG/Oops in the kernel log during the test (%d)", bad);
	return tap_done();
}
