/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the mm-template selftests: TAP output, the device-dax
 * device under test, /proc/PID/pagemap, /dev/kmsg scanning, ioctl wrappers.
 */
#ifndef MMT_UTIL_H
#define MMT_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/mm_template.h>

#define PAGE 4096UL

/* ---- TAP ------------------------------------------------------------- */

static int tap_n, tap_failed;

static inline void tap_result(bool pass, const char *fmt, ...)
{
	va_list ap;

	tap_n++;
	if (!pass)
		tap_failed++;
	printf("%s %d - ", pass ? "ok" : "not ok", tap_n);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static inline void tap_diag(const char *fmt, ...)
{
	va_list ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

#define TAP_OK(cond, ...) tap_result(!!(cond), __VA_ARGS__)

/* expect @call to fail with @err */
#define TAP_ERRNO(call, err, ...) do {					\
	long __r = (call);						\
	int __e = errno;						\
	bool __p = (__r == -1 && __e == (err));				\
	if (!__p)							\
		tap_diag("  got ret=%ld errno=%d (%s), want errno %d (%s)", \
			 __r, __r == -1 ? __e : 0,			\
			 __r == -1 ? strerror(__e) : "-", err, strerror(err)); \
	tap_result(__p, __VA_ARGS__);					\
} while (0)

static inline int tap_done(void)
{
	printf("1..%d\n", tap_n);
	printf("# %d passed, %d failed\n", tap_n - tap_failed, tap_failed);
	fflush(stdout);
	return tap_failed ? 1 : 0;
}

static inline void die(const char *what)
{
	printf("Bail out! %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(2);
}

/* ---- the device-dax device ------------------------------------------- */

struct dax_dev {
	char path[64];		/* /dev/dax0.0 */
	char name[32];		/* dax0.0 */
	uint64_t size;		/* bytes */
	uint64_t start;		/* physical address of offset 0 */
	uint64_t end;		/* last physical address (inclusive) */
	uint64_t align;
};

static inline int read_sysfs_u64(const char *path, uint64_t *val)
{
	char buf[64];
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f)) {
		fclose(f);
		return -1;
	}
	fclose(f);
	*val = strtoull(buf, NULL, 0);
	return 0;
}

/*
 * Size, alignment and physical range of the device.  The range comes from
 * /proc/iomem (device-dax claims it under its own name) and is checked
 * against /sys/bus/dax/devices/NAME/resource.
 */
static inline int dax_dev_init(struct dax_dev *d, const char *path)
{
	char p[256], line[256];
	const char *slash = strrchr(path, '/');
	uint64_t res = 0;
	FILE *f;

	memset(d, 0, sizeof(*d));
	snprintf(d->path, sizeof(d->path), "%s", path);
	snprintf(d->name, sizeof(d->name), "%s", slash ? slash + 1 : path);
	snprintf(p, sizeof(p), "/sys/bus/dax/devices/%s/size", d->name);
	if (read_sysfs_u64(p, &d->size))
		return -1;
	snprintf(p, sizeof(p), "/sys/bus/dax/devices/%s/align", d->name);
	if (read_sysfs_u64(p, &d->align))
		d->align = PAGE;
	snprintf(p, sizeof(p), "/sys/bus/dax/devices/%s/resource", d->name);
	read_sysfs_u64(p, &res);

	f = fopen("/proc/iomem", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long s, e;
		char *colon = strstr(line, " : ");

		if (!colon || strncmp(colon + 3, d->name, strlen(d->name)) ||
		    (colon[3 + strlen(d->name)] != '\n' &&
		     colon[3 + strlen(d->name)] != '\0'))
			continue;
		if (sscanf(line, " %llx-%llx", &s, &e) == 2) {
			d->start = s;
			d->end = e;
			break;
		}
	}
	fclose(f);
	if (!d->start && !d->end) {
		/* not root, or no iomem entry: fall back to sysfs */
		d->start = res;
		d->end = res + d->size - 1;
	}
	if (res && res != d->start)
		return -1;
	return 0;
}

/* PFN the device page at @offset has in this guest */
static inline uint64_t dax_pfn(const struct dax_dev *d, uint64_t offset)
{
	return (d->start + offset) / PAGE;
}

static inline bool dax_pfn_in(const struct dax_dev *d, uint64_t pfn)
{
	return pfn >= d->start / PAGE && pfn <= d->end / PAGE;
}

/* ---- /proc/PID/pagemap ------------------------------------------------ */

#define PM_PRESENT	(1ULL << 63)
#define PM_PFN_MASK	((1ULL << 55) - 1)

/* pagemap entry of @addr in process @pid (0: self); ~0 on error */
static inline uint64_t pagemap_entry(pid_t pid, unsigned long addr)
{
	char path[64];
	uint64_t ent;
	int fd;

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	else
		snprintf(path, sizeof(path), "/proc/self/pagemap");
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return ~0ULL;
	if (pread(fd, &ent, sizeof(ent), (addr / PAGE) * sizeof(ent)) !=
	    sizeof(ent))
		ent = ~0ULL;
	close(fd);
	return ent;
}

/* PFN mapped at @addr, 0 if not present */
static inline uint64_t pfn_at(pid_t pid, unsigned long addr)
{
	uint64_t ent = pagemap_entry(pid, addr);

	if (ent == ~0ULL || !(ent & PM_PRESENT))
		return 0;
	return ent & PM_PFN_MASK;
}

/* ---- kernel log: new WARNING / BUG / Oops lines ---------------------- */

static inline int kmsg_open_at_end(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);

	if (fd >= 0)
		lseek(fd, 0, SEEK_END);
	return fd;
}

/* count new kernel log records that look like a warning or a crash */
static inline int kmsg_count_bad(int fd, bool print)
{
	char rec[8192];
	int bad = 0;

	if (fd < 0)
		return -1;
	for (;;) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);

		if (n < 0) {
			if (errno == EPIPE)	/* overwritten records */
				continue;
			break;		/* EAGAIN: no more */
		}
		rec[n] = 0;
		if (strstr(rec, "WARNING:") || strstr(rec, "BUG:") ||
		    strstr(rec, "Oops") || strstr(rec, "kernel BUG") ||
		    strstr(rec, "Call Trace") || strstr(rec, "bad pte") ||
		    strstr(rec, "Bad page")) {
			bad++;
			if (print) {
				char *semi = strchr(rec, ';');

				printf("# kmsg: %s", semi ? semi + 1 : rec);
			}
		}
	}
	return bad;
}

/* ---- ioctl wrappers ----------------------------------------------------- */

static inline int mmt_open(void)
{
	return open("/dev/mm_template", O_RDWR | O_CLOEXEC);
}

static inline int mmt_register(int mfd, const char *name, int dax_fd,
			       struct mmt_area *areas, unsigned int nr)
{
	struct mmt_register r;

	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.dax_fd = dax_fd;
	r.nr_areas = nr;
	r.areas = (uintptr_t)areas;
	snprintf(r.name, sizeof(r.name), "%s", name);
	return ioctl(mfd, MMT_IOC_REGISTER, &r);
}

static inline int mmt_attach(int mfd, const char *name, unsigned int flags)
{
	struct mmt_attach a;

	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.flags = flags;
	snprintf(a.name, sizeof(a.name), "%s", name);
	return ioctl(mfd, MMT_IOC_ATTACH, &a);
}

static inline int mmt_detach(int mfd, const char *name)
{
	struct mmt_attach a;

	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	snprintf(a.name, sizeof(a.name), "%s", name);
	return ioctl(mfd, MMT_IOC_DETACH, &a);
}

static inline int mmt_remove(int mfd, const char *name)
{
	struct mmt_remove r;

	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	snprintf(r.name, sizeof(r.name), "%s", name);
	return ioctl(mfd, MMT_IOC_REMOVE, &r);
}

static inline int mmt_info(int mfd, const char *name, struct mmt_info *i,
			   unsigned int flags)
{
	memset(i, 0, sizeof(*i));
	i->size = sizeof(*i);
	i->flags = flags;
	snprintf(i->name, sizeof(i->name), "%s", name);
	return ioctl(mfd, MMT_IOC_INFO, i);
}

/* ---- test data ------------------------------------------------------------ */

/* the byte at @off of page @pg of template contents generation @gen */
static inline uint8_t pattern(unsigned int gen, uint64_t pg, unsigned int off)
{
	return (uint8_t)(gen * 131 + pg * 7 + off * 13 + 1);
}

static inline void fill_page(void *p, unsigned int gen, uint64_t pg)
{
	uint8_t *b = p;
	unsigned int i;

	for (i = 0; i < PAGE; i++)
		b[i] = pattern(gen, pg, i);
}

static inline bool check_page(const void *p, unsigned int gen, uint64_t pg)
{
	const uint8_t *b = p;
	unsigned int i;

	for (i = 0; i < PAGE; i++)
		if (b[i] != pattern(gen, pg, i))
			return false;
	return true;
}

/* map [off, off+len) of the device MAP_SHARED; both device-aligned */
static inline void *dax_map_shared(int fd, uint64_t off, uint64_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);

	return p == MAP_FAILED ? NULL : p;
}

#endif /* MMT_UTIL_H */
