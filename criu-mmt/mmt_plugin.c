// SPDX-License-Identifier: GPL-2.0
/*
 * cxltb_mmt: a CRIU plugin that gives a restored task its private memory from an
 * mm-template instead of from pages-*.img.
 *
 * The image set of a template-mode restore has the template's pages removed from its
 * pagemap (tbagent does that), so CRIU's restorer sets up those VMAs empty and copies
 * nothing. At RESUME_DEVICES_LATE the task is fully restored and still stopped under
 * CRIU's ptrace, right where CRIU itself unmaps its restorer blob: here the plugin runs
 * system calls inside the task (compel, exported by the criu binary) to unmap the empty
 * ranges and MMT_IOC_ATTACH the template in their place, copy-on-write on the CXL pages.
 *
 * The image directory holds `cxltb-mmt.conf`: "template NAME" and optionally "populate"
 * (also asked for per restore by CXLTB_MMT_POPULATE=1 in criu's environment: map every page
 * at attach instead of on first touch). Without the file the plugin does nothing. Any failure kills the task: a restored process
 * whose memory is missing must never run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <criu/criu-plugin.h>
#include <compel/infect.h>
#include <compel/loglevels.h>
#include <linux/mm_template.h>

#define CONF_NAME "cxltb-mmt.conf"
#define DEV_PATH "/dev/mm_template"
#define LOG_PREFIX "cxltb_mmt: "

/* criu's logger (exported by the binary); Debian's criu-log.h cannot be included alone. */
extern void print_on_level(unsigned int loglevel, const char *format, ...)
	__attribute__((format(printf, 2, 3)));
#define pr_err(fmt, ...) print_on_level(COMPEL_LOG_ERROR, "Error: " fmt, ##__VA_ARGS__)
#define pr_info(fmt, ...) print_on_level(COMPEL_LOG_INFO, fmt, ##__VA_ARGS__)
#define pr_perror(fmt, ...) pr_err(fmt ": %s\n", ##__VA_ARGS__, strerror(errno))

static char tmpl_name[MMT_NAME_MAX];
static int populate;
static int done;

/* Reads the image set's request; 0 = nothing to do, 1 = attach, -1 = bad file. */
static int read_conf(void)
{
	char line[128];
	int dfd, fd;
	FILE *f;

	dfd = criu_get_image_dir();
	fd = openat(dfd, CONF_NAME, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	f = fdopen(fd, "r");
	if (!f) {
		close(fd);
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		if (!strncmp(line, "template ", 9) && strlen(line + 9) < MMT_NAME_MAX)
			strcpy(tmpl_name, line + 9);
		else if (!strcmp(line, "populate"))
			populate = 1;
		else if (line[0] && line[0] != '#') {
			pr_err(LOG_PREFIX "%s: bad line '%s'\n", CONF_NAME, line);
			fclose(f);
			return -1;
		}
	}
	fclose(f);
	if (getenv("CXLTB_MMT_POPULATE") && !strcmp(getenv("CXLTB_MMT_POPULATE"), "1"))
		populate = 1;
	if (!tmpl_name[0]) {
		pr_err(LOG_PREFIX "%s names no template\n", CONF_NAME);
		return -1;
	}
	return 1;
}

/* The template's areas, read in the criu process (they are global, not per task). */
static struct mmt_area *template_areas(unsigned int *nr)
{
	struct mmt_info info = { .size = sizeof(info) };
	struct mmt_area *areas = NULL;
	int fd;

	fd = open(DEV_PATH, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		pr_perror(LOG_PREFIX "open " DEV_PATH);
		return NULL;
	}
	strcpy(info.name, tmpl_name);
	if (ioctl(fd, MMT_IOC_INFO, &info)) {
		pr_perror(LOG_PREFIX "MMT_IOC_INFO %s", tmpl_name);
		goto out;
	}
	areas = calloc(info.nr_areas, sizeof(*areas));
	if (!areas)
		goto out;
	info.areas = (unsigned long)areas;
	info.areas_cap = info.nr_areas;
	if (ioctl(fd, MMT_IOC_INFO, &info)) {
		pr_perror(LOG_PREFIX "MMT_IOC_INFO %s", tmpl_name);
		free(areas);
		areas = NULL;
		goto out;
	}
	*nr = info.nr_areas < info.areas_cap ? info.nr_areas : info.areas_cap;
out:
	close(fd);
	return areas;
}

/* One system call in the task; returns its result (-errno), or -EIO if ptrace failed. */
static long remote(struct parasite_ctl *ctl, int nr, unsigned long a1, unsigned long a2,
		   unsigned long a3, unsigned long a4, unsigned long a5, unsigned long a6)
{
	long ret;

	if (compel_syscall(ctl, nr, &ret, a1, a2, a3, a4, a5, a6))
		return -EIO;
	return ret;
}

/* Scratch page layout in the task: the device path, then the attach argument. */
struct scratch {
	char path[32];
	struct mmt_attach attach;
};

static int attach_in_task(int pid)
{
	struct parasite_ctl *ctl;
	struct mmt_area *areas;
	struct scratch s = { .path = DEV_PATH };
	unsigned int nr = 0, i;
	unsigned long mem;
	long fd = -1, ret = -1;
	struct iovec local, rem;

	areas = template_areas(&nr);
	if (!areas)
		return -1;

	ctl = compel_prepare(pid);
	if (!ctl) {
		pr_err(LOG_PREFIX "cannot take control of task %d\n", pid);
		free(areas);
		return -1;
	}

	mem = (unsigned long)remote(ctl, __NR_mmap, 0, 4096, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if ((long)mem < 0 && (long)mem > -4096) {
		pr_err(LOG_PREFIX "mmap in task %d: %ld\n", pid, (long)mem);
		goto out;
	}
	s.attach.size = sizeof(s.attach);
	s.attach.flags = populate ? MMT_ATTACH_POPULATE : 0;
	strcpy(s.attach.name, tmpl_name);
	local = (struct iovec){ &s, sizeof(s) };
	rem = (struct iovec){ (void *)mem, sizeof(s) };
	if (process_vm_writev(pid, &local, 1, &rem, 1, 0) != sizeof(s)) {
		pr_perror(LOG_PREFIX "write to task %d", pid);
		goto unmap;
	}

	fd = remote(ctl, __NR_openat, AT_FDCWD, mem + offsetof(struct scratch, path), O_RDWR | O_CLOEXEC, 0, 0, 0);
	if (fd < 0) {
		pr_err(LOG_PREFIX "open %s in task %d: %ld\n", DEV_PATH, pid, fd);
		goto unmap;
	}
	/* CRIU restored these ranges empty (their pages were left out of the image). */
	for (i = 0; i < nr; i++) {
		ret = remote(ctl, __NR_munmap, areas[i].addr, areas[i].len, 0, 0, 0, 0);
		if (ret) {
			pr_err(LOG_PREFIX "munmap %llx+%llx in task %d: %ld\n", (unsigned long long)areas[i].addr,
			       (unsigned long long)areas[i].len, pid, ret);
			goto close_fd;
		}
	}
	ret = remote(ctl, __NR_ioctl, fd, MMT_IOC_ATTACH, mem + offsetof(struct scratch, attach), 0, 0, 0);
	if (ret)
		pr_err(LOG_PREFIX "MMT_IOC_ATTACH %s in task %d: %ld\n", tmpl_name, pid, ret);
	else
		pr_info(LOG_PREFIX "attached %s (%u areas%s) to task %d\n", tmpl_name, nr,
			populate ? ", populated" : "", pid);
close_fd:
	remote(ctl, __NR_close, fd, 0, 0, 0, 0, 0);
unmap:
	remote(ctl, __NR_munmap, mem, 4096, 0, 0, 0, 0);
out:
	if (compel_cure_local(ctl))
		pr_err(LOG_PREFIX "cannot release task %d\n", pid);
	free(areas);
	return ret ? -1 : 0;
}

static int mmt_resume_devices_late(int pid)
{
	int conf;

	/* The first task is the root of the tree: the process the template was taken from. */
	if (done)
		return -ENOTSUP;
	done = 1;
	conf = read_conf();
	if (conf == 0)
		return -ENOTSUP;
	if (conf < 0 || attach_in_task(pid)) {
		/* CRIU ignores this hook's result: make sure the half-restored task never runs. */
		pr_err(LOG_PREFIX "killing task %d: its memory is not in place\n", pid);
		kill(pid, SIGKILL);
		return -1;
	}
	return 0;
}

static int mmt_init(int stage)
{
	return 0;
}

static void mmt_exit(int stage, int ret)
{
}

CR_PLUGIN_REGISTER("cxltb_mmt", mmt_init, mmt_exit)
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__RESUME_DEVICES_LATE, mmt_resume_devices_late)
