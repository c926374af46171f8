// SPDX-License-Identifier: GPL-2.0
/*
 * mm-template attach cost against copying the same bytes into anonymous memory.
 *
 *   mmt_bench -d /dev/daxX.Y -s SIZE_MIB [-r REPS]
 *
 * For each repetition prints one line per method:
 *   populate: MMT_IOC_ATTACH with MMT_ATTACH_POPULATE (read-only PTEs mapped at attach)
 *   lazy:     MMT_IOC_ATTACH without it (PTEs mapped by read faults)
 *   copy:     memcpy from a MAP_SHARED device mapping into fresh anonymous memory
 * with the time to make the memory available ("ready_us") and the time until every page
 * has been read once ("read_all_us"), so eager and lazy set-ups are compared fairly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mmt_util.h"

#define PAGE_SZ 4096UL
#define ALIGN_2M (2UL << 20)

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t read_all(const volatile uint8_t *p, uint64_t len)
{
	uint64_t sum = 0;

	for (uint64_t off = 0; off < len; off += PAGE_SZ)
		sum += p[off];
	return sum;
}

/* A free, 2 MiB aligned range of len bytes in this address space. */
static unsigned long free_range(uint64_t len)
{
	uint8_t *p = mmap(NULL, len + ALIGN_2M, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned long a;

	if (p == MAP_FAILED)
		die("mmap reserve");
	a = ((unsigned long)p + ALIGN_2M - 1) & ~(ALIGN_2M - 1);
	munmap(p, len + ALIGN_2M);
	return a;
}

int main(int argc, char **argv)
{
	const char *dev = NULL;
	uint64_t size_mib = 64, len;
	int reps = 5, opt, dfd, mfd;
	volatile uint64_t sink = 0;

	while ((opt = getopt(argc, argv, "d:s:r:")) != -1) {
		switch (opt) {
		case 'd': dev = optarg; break;
		case 's': size_mib = strtoull(optarg, NULL, 0); break;
		case 'r': reps = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s -d /dev/daxX.Y -s SIZE_MIB [-r REPS]\n", argv[0]);
			return 2;
		}
	}
	if (!dev) {
		fprintf(stderr, "usage: %s -d /dev/daxX.Y -s SIZE_MIB [-r REPS]\n", argv[0]);
		return 2;
	}
	len = size_mib << 20;
	dfd = open(dev, O_RDWR | O_CLOEXEC);
	mfd = mmt_open();
	if (dfd < 0 || mfd < 0)
		die("open");

	for (int rep = 0; rep < reps; rep++) {
		static const unsigned int modes[2] = { MMT_ATTACH_POPULATE, 0 };

		for (int m = 0; m < 2; m++) {
			struct mmt_area area = { .addr = free_range(len), .len = len, .offset = 0,
						 .prot = PROT_READ | PROT_WRITE };
			uint64_t t0, t1, t2;

			if (mmt_register(mfd, "bench", dfd, &area, 1))
				die("MMT_IOC_REGISTER");
			t0 = now_us();
			if (mmt_attach(mfd, "bench", modes[m]))
				die("MMT_IOC_ATTACH");
			t1 = now_us();
			sink += read_all((const volatile uint8_t *)area.addr, len);
			t2 = now_us();
			printf("method=%s size_mib=%llu rep=%d ready_us=%llu read_all_us=%llu\n",
			       modes[m] ? "populate" : "lazy", (unsigned long long)size_mib, rep,
			       (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t0));
			if (mmt_detach(mfd, "bench") || mmt_remove(mfd, "bench"))
				die("MMT_IOC_DETACH/REMOVE");
		}
		{
			uint8_t *src = dax_map_shared(dfd, 0, len);
			uint64_t t0, t1, t2;
			uint8_t *dst;

			if (!src)
				die("mmap dax");
			t0 = now_us();
			dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (dst == MAP_FAILED)
				die("mmap anon");
			memcpy(dst, src, len);
			t1 = now_us();
			sink += read_all(dst, len);
			t2 = now_us();
			printf("method=copy size_mib=%llu rep=%d ready_us=%llu read_all_us=%llu\n",
			       (unsigned long long)size_mib, rep, (unsigned long long)(t1 - t0),
			       (unsigned long long)(t2 - t0));
			munmap(dst, len);
			munmap(src, len);
		}
	}
	fprintf(stderr, "sink %llu\n", (unsigned long long)sink);
	return 0;
}
