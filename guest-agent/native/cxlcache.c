/* Cache maintenance for CXL memory shared by several hosts without hardware coherence.
 * Writers flush their lines to memory before publishing; readers drop their cached copies
 * before reading what another host wrote. clflush does both: it writes back a dirty line
 * and invalidates it. The fences order the flushes against the surrounding stores. */
#include <stddef.h>
#include <stdint.h>

#define LINE 64

static void clflush_range(const volatile void *addr, size_t len)
{
	uintptr_t p = (uintptr_t)addr & ~(uintptr_t)(LINE - 1);
	uintptr_t end = (uintptr_t)addr + len;

	__asm__ volatile("mfence" ::: "memory");
	for (; p < end; p += LINE)
		__asm__ volatile("clflush (%0)" :: "r"(p) : "memory");
	__asm__ volatile("mfence" ::: "memory");
}

/* Write back [addr, addr+len) so other hosts can see it. */
void cxl_flush(const volatile void *addr, size_t len) { clflush_range(addr, len); }

/* Drop cached copies of [addr, addr+len) so the next loads come from memory. */
void cxl_invalidate(const volatile void *addr, size_t len) { clflush_range(addr, len); }

/* Store a 32-bit flag with one aligned store, then flush it: the publication point. */
void cxl_publish_u32(volatile uint32_t *addr, uint32_t value)
{
	__asm__ volatile("mfence" ::: "memory");
	*addr = value;
	clflush_range(addr, sizeof(*addr));
}
