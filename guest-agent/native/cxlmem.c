/* cxlmem: memory bandwidth, latency and sharing checks inside a guest, on CXL memory (a
 * device-dax file, mapped shared as the testbed's users map it) or on local anonymous memory.
 *
 *   cxlmem read   TARGET BYTES REPS            sequential 8-byte loads, MB/s per rep
 *   cxlmem write  TARGET BYTES REPS            sequential 8-byte stores, MB/s per rep
 *   cxlmem chase  TARGET BYTES STEPS REPS SEED dependent loads over a random cycle of 64-byte
 *                                              lines covering BYTES, ns per load per rep
 *   cxlmem fill   TARGET OFFSET BYTES SEED     write a pattern derived from SEED and the offset
 *   cxlmem verify TARGET OFFSET BYTES SEED     count 8-byte words that differ from the pattern
 *   cxlmem vector TARGET BYTES                 SSE2 and (where the CPU has it) AVX2 stores and
 *                                              loads, checked: what KVM cannot emulate on MMIO
 *
 * TARGET is a path (device-dax) or "anon". One JSON object per line on stdout. Plain loops,
 * not memcpy: every access is an 8-byte load or store, the same on every path, so the
 * figures compare memory paths and not library code. */
#define _GNU_SOURCE
#include <errno.h>
#include <immintrin.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LINE 64

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
	fprintf(stderr, "cxlmem: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t num(const char *s, const char *what)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *end || end == s) {
		fprintf(stderr, "cxlmem: %s: not a number: %s\n", what, s);
		exit(2);
	}
	return v;
}

static volatile uint64_t *map(const char *target, uint64_t len)
{
	void *p;

	if (strcmp(target, "anon") == 0) {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	} else {
		/* device-dax refuses lengths that are not multiples of its 2 MiB alignment */
		int fd = open(target, O_RDWR);

		len = (len + (2u << 20) - 1) & ~(uint64_t)((2u << 20) - 1);

		if (fd < 0)
			die(target);
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
	}
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

/* splitmix64: the pattern of fill/verify and the permutation of chase. */
static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static double read_pass(volatile uint64_t *m, uint64_t words, uint64_t *sink)
{
	uint64_t a = 0, b = 0, c = 0, d = 0, i;
	double t = now();

	for (i = 0; i + 4 <= words; i += 4) {
		a += m[i];
		b += m[i + 1];
		c += m[i + 2];
		d += m[i + 3];
	}
	t = now() - t;
	*sink += a + b + c + d;
	return t;
}

static double write_pass(volatile uint64_t *m, uint64_t words, uint64_t v)
{
	uint64_t i;
	double t = now();

	for (i = 0; i < words; i++)
		m[i] = v + i;
	return now() - t;
}

/* Sattolo's algorithm gives one cycle through every line, so no line is revisited early. */
static void build_cycle(volatile uint64_t *m, uint64_t lines, uint64_t seed)
{
	uint32_t *perm = malloc(lines * sizeof(*perm));
	uint64_t i, s = seed;

	if (!perm)
		die("malloc");
	for (i = 0; i < lines; i++)
		perm[i] = i;
	for (i = lines - 1; i > 0; i--) {
		uint64_t j;
		uint32_t t;

		s = mix(s);
		j = s % i;
		t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	for (i = 0; i < lines; i++)
		m[(uint64_t)i * (LINE / 8)] = (uint64_t)perm[i] * (LINE / 8);
	free(perm);
}

static double chase_pass(volatile uint64_t *m, uint64_t steps, uint64_t *pos)
{
	uint64_t p = *pos, i;
	double t = now();

	for (i = 0; i < steps; i++)
		p = m[p];
	t = now() - t;
	*pos = p;
	return t;
}

/* 16-byte stores then loads; KVM's instruction emulator handles some of these on MMIO. */
static uint64_t vector_sse2(volatile uint64_t *m, uint64_t bytes)
{
	uint64_t i, bad = 0;

	for (i = 0; i < bytes / 16; i++)
		_mm_storeu_si128((__m128i *)(m + 2 * i), _mm_set_epi64x((long long)mix(2 * i + 1), (long long)mix(2 * i)));
	for (i = 0; i < bytes / 16; i++) {
		__m128i v = _mm_loadu_si128((const __m128i *)(m + 2 * i));

		bad += (uint64_t)_mm_cvtsi128_si64(v) != mix(2 * i);
	}
	return bad;
}

/* 32-byte AVX stores and loads: a guest on MMIO-backed CXL memory stops here under KVM. */
__attribute__((target("avx2"))) static uint64_t vector_avx2(volatile uint64_t *m, uint64_t bytes)
{
	uint64_t i, bad = 0;

	for (i = 0; i < bytes / 32; i++)
		_mm256_storeu_si256((__m256i *)(m + 4 * i), _mm256_set1_epi64x((long long)mix(i)));
	for (i = 0; i < bytes / 32; i++) {
		__m256i v = _mm256_loadu_si256((const __m256i *)(m + 4 * i));

		bad += (uint64_t)_mm256_extract_epi64(v, 3) != mix(i);
	}
	return bad;
}

int main(int argc, char **argv)
{
	uint64_t sink = 0;

	if (argc == 5 && (!strcmp(argv[1], "read") || !strcmp(argv[1], "write"))) {
		uint64_t bytes = num(argv[3], "BYTES"), reps = num(argv[4], "REPS"), r;
		volatile uint64_t *m = map(argv[2], bytes);
		int rd = !strcmp(argv[1], "read");

		for (r = 0; r < reps; r++) {
			double t = rd ? read_pass(m, bytes / 8, &sink) : write_pass(m, bytes / 8, r);

			printf("{\"op\":\"%s\",\"rep\":%llu,\"bytes\":%llu,\"seconds\":%.6f,\"mbps\":%.1f}\n", argv[1],
			       (unsigned long long)r, (unsigned long long)bytes, t, bytes / t / 1e6);
			fflush(stdout);
		}
	} else if (argc == 7 && !strcmp(argv[1], "chase")) {
		uint64_t bytes = num(argv[3], "BYTES"), steps = num(argv[4], "STEPS");
		uint64_t reps = num(argv[5], "REPS"), seed = num(argv[6], "SEED"), pos = 0, r;
		volatile uint64_t *m = map(argv[2], bytes);

		if (bytes / LINE < 2 || bytes / LINE > UINT32_MAX) {
			fprintf(stderr, "cxlmem: BYTES must hold 2 to 2^32 lines of %d bytes\n", LINE);
			return 2;
		}
		build_cycle(m, bytes / LINE, seed);
		for (r = 0; r < reps; r++) {
			double t = chase_pass(m, steps, &pos);

			printf("{\"op\":\"chase\",\"rep\":%llu,\"bytes\":%llu,\"steps\":%llu,\"seconds\":%.6f,\"ns\":%.2f}\n",
			       (unsigned long long)r, (unsigned long long)bytes, (unsigned long long)steps, t,
			       t * 1e9 / steps);
			fflush(stdout);
		}
		sink += pos;
	} else if (argc == 6 && (!strcmp(argv[1], "fill") || !strcmp(argv[1], "verify"))) {
		uint64_t off = num(argv[3], "OFFSET"), bytes = num(argv[4], "BYTES"), seed = num(argv[5], "SEED");
		uint64_t i, bad = 0, first = UINT64_MAX;
		volatile uint64_t *m;

		if (off % 8 || bytes % 8) {
			fprintf(stderr, "cxlmem: OFFSET and BYTES must be multiples of 8\n");
			return 2;
		}
		m = map(argv[2], off + bytes) + off / 8;
		for (i = 0; i < bytes / 8; i++) {
			uint64_t want = mix(seed ^ (off + i * 8));

			if (argv[1][0] == 'f') {
				m[i] = want;
			} else if (m[i] != want) {
				bad++;
				if (first == UINT64_MAX)
					first = off + i * 8;
			}
		}
		if (argv[1][0] == 'f')
			msync((void *)((uintptr_t)m & ~(uintptr_t)4095), bytes + ((uintptr_t)m & 4095), MS_SYNC);
		printf("{\"op\":\"%s\",\"offset\":%llu,\"bytes\":%llu,\"bad_words\":%llu,\"first_bad\":%lld}\n", argv[1],
		       (unsigned long long)off, (unsigned long long)bytes, (unsigned long long)bad,
		       first == UINT64_MAX ? -1LL : (long long)first);
	} else if (argc == 4 && !strcmp(argv[1], "vector")) {
		uint64_t bytes = num(argv[3], "BYTES");
		volatile uint64_t *m = map(argv[2], bytes);
		uint64_t bad = vector_sse2(m, bytes);
		int avx2 = __builtin_cpu_supports("avx2");

		if (avx2)
			bad += vector_avx2(m, bytes);
		printf("{\"op\":\"vector\",\"bytes\":%llu,\"avx2\":%s,\"bad\":%llu}\n", (unsigned long long)bytes,
		       avx2 ? "true" : "false", (unsigned long long)bad);
		return bad != 0;
	} else {
		fprintf(stderr, "usage: cxlmem read|write TARGET BYTES REPS | chase TARGET BYTES STEPS REPS SEED |"
				" fill|verify TARGET OFFSET BYTES SEED | vector TARGET BYTES\n");
		return 2;
	}
	/* Keep the loads: the sum is printed where nobody looks. */
	fprintf(stderr, "%s", sink == 42 ? " " : "");
	return 0;
}
