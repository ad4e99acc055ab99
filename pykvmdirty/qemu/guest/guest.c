/*
 * guest.c - the workloads of the pykvmdirty QEMU test guest.
 *
 * guest_init() runs at CPL0 (called from boot.S): it checks the parameter
 * block the host placed at PARAMS_ADDR (QEMU `-device loader`), measures the
 * TSC frequency against the PIT (unless the host gave one) and publishes the
 * status block at STATUS_ADDR.  guest_main() then runs at CPL3, forever:
 *
 *   ab       QEMU tests/migration's a-b guest: increment the first byte of
 *            every 4 KiB page in [start, end), sweep after sweep; unpaced
 *            unless a rate is given.
 *   uniform  increment the first byte of a random page of [start, end) at
 *            `rate` pages/s, paced by the TSC.
 *   hotspot  as uniform, but `hot_threshold` / 2^53 of the writes go to a
 *            hot set of `hot_pages` pages (its place drawn from the seed) and
 *            the rest to the other pages of the range.
 * The random pages are kvmdirty/page_draw.h's, the emulator's own draws: with
 * the same seed the guest writes the pages the emulated workload writes.
 *   idle     no writes; only the status block's heartbeat.
 *
 * Status (read by the host with QMP `xp`/`pmemsave`): `passes` counts
 * completed sweeps (ab) or batches (others), `pages` counts page writes,
 * `tsc` is the TSC at the last update.  Pacing catches up at most
 * max(2 batches, 2 ms) of lag: short preemptions of the vCPU thread (a shared
 * host) are made up, longer stops (auto-converge's throttle sleeps >= 2.5 ms
 * per 10 ms, a migration pause, a TSC jump) are lost, as for a real guest
 * whose work arrives at a fixed rate and is dropped when it cannot keep up.
 */
#include <stdint.h>

#include "kvmdirty/page_draw.h"

#define PARAMS_MAGIC 0x534d524150444b50ull  /* "PKDPARMS" */
#define STATUS_MAGIC 0x5453544144444b50ull  /* "PKDDATST" */

enum { WL_IDLE = 0, WL_AB = 1, WL_UNIFORM = 2, WL_HOTSPOT = 3 };
enum { ST_BOOTING = 1, ST_RUNNING = 2, ST_BAD_PARAMS = 3 };

struct params {                 /* written by the host; layout.py packs it */
	uint64_t magic, workload, start, end, rate, seed;
	uint64_t hot_pages, hot_threshold, tsc_hz;
};

struct status {                 /* read by the host; layout.py parses it */
	uint64_t magic, state, tsc_hz, passes, pages, tsc, tsc_start, workload;
};

#define P ((volatile struct params *)PARAMS_ADDR)
#define S ((volatile struct status *)STATUS_ADDR)

static struct params cfg;       /* CPL0 copy, checked */

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* TSC ticks per second, measured over 50 ms of PIT channel 2 (mode 0). */
static uint64_t calibrate_tsc(void)
{
	const uint32_t pit_hz = 1193182, ms = 50, latch = pit_hz * ms / 1000;
	uint64_t t0, t1, spins = 0;

	outb(0x61, (inb(0x61) & ~0x02) | 0x01);   /* gate on, speaker off */
	outb(0x43, 0xb0);                          /* ch 2, lo/hi byte, mode 0, binary */
	outb(0x42, latch & 0xff);
	outb(0x42, latch >> 8);
	t0 = rdtsc();
	while (!(inb(0x61) & 0x20))
		if (++spins > (1ull << 32))
			return 0;              /* no PIT: the host must pass tsc_hz */
	t1 = rdtsc();
	return (t1 - t0) * 1000 / ms;
}

static int params_ok(const struct params *p)
{
	if (p->magic != PARAMS_MAGIC || p->workload > WL_HOTSPOT)
		return 0;
	if (p->workload == WL_IDLE)
		return 1;
	if ((p->start | p->end) & 0xfff || p->start < 0x100000 || p->end <= p->start)
		return 0;
	if (p->workload == WL_HOTSPOT) {
		uint64_t n = (p->end - p->start) >> 12;
		if (p->hot_pages == 0 || p->hot_pages > n || p->hot_threshold > (1ull << 53))
			return 0;
	}
	return p->workload == WL_AB || p->rate > 0;
}

void guest_init(void)
{
	cfg = *(const struct params *)P;
	S->magic = STATUS_MAGIC;
	S->state = ST_BOOTING;
	S->workload = cfg.workload;
	if (!params_ok(&cfg)) {
		S->state = ST_BAD_PARAMS;
		for (;;)
			__asm__ volatile("cli; hlt");
	}
	S->tsc_hz = cfg.tsc_hz ? cfg.tsc_hz : calibrate_tsc();
	if (!S->tsc_hz)
		S->state = ST_BAD_PARAMS;
}

static inline void touch(uint64_t page_addr)
{
	(*(volatile uint8_t *)page_addr)++;
}

/* Paced writes: batches of `batch` pages, one every `interval` TSC ticks. */
struct pacer { uint64_t interval, deadline, max_lag; };

static void pacer_init(struct pacer *p, uint64_t interval)
{
	uint64_t two_ms = S->tsc_hz / 500;

	p->interval = interval;
	p->max_lag = 2 * interval > two_ms ? 2 * interval : two_ms;
	p->deadline = rdtsc();
}

static void pace(struct pacer *p)
{
	uint64_t now = rdtsc();

	p->deadline += p->interval;
	if (now > p->deadline + p->max_lag || p->deadline > now + 2 * p->interval)
		p->deadline = now;     /* fell behind (throttle, pause) or TSC jumped back */
	while (rdtsc() < p->deadline)
		cpu_relax();
}

static void run_ab(void)
{
	const uint64_t start = cfg.start, end = cfg.end, n = (end - start) >> 12;
	struct pacer pc;

	pacer_init(&pc, cfg.rate ? S->tsc_hz * n / cfg.rate : 0);
	for (;;) {
		for (uint64_t a = start; a < end; a += 4096)
			touch(a);
		S->passes++;
		S->pages += n;
		S->tsc = rdtsc();
		if (cfg.rate)
			pace(&pc);
	}
}

static void run_random(void)
{
	const uint64_t n = (cfg.end - cfg.start) >> 12;
	uint64_t batch = cfg.rate / 10000 ? cfg.rate / 10000 : 1;   /* >= 100 us per batch */
	struct pacer pc;
	struct kd_draw d;

	pacer_init(&pc, S->tsc_hz * batch / cfg.rate);
	kd_draw_init(&d, cfg.seed, n);
	if (cfg.workload == WL_HOTSPOT)
		kd_draw_hot(&d, cfg.hot_pages, cfg.hot_threshold);
	for (;;) {
		for (uint64_t i = 0; i < batch; i++)
			touch(cfg.start + (kd_draw_page(&d) << 12));
		S->passes++;
		S->pages += batch;
		S->tsc = rdtsc();
		pace(&pc);
	}
}

static void run_idle(void)
{
	struct pacer pc;

	pacer_init(&pc, S->tsc_hz / 100);    /* heartbeat every 10 ms */

	for (;;) {
		S->passes++;
		S->tsc = rdtsc();
		pace(&pc);
	}
}

void guest_main(void)
{
	if (S->state != ST_BOOTING)
		for (;;)
			cpu_relax();       /* bad parameters: the host reads the state */
	S->tsc_start = S->tsc = rdtsc();
	S->state = ST_RUNNING;
	switch (cfg.workload) {
	case WL_AB:
		run_ab();
	case WL_UNIFORM:
	case WL_HOTSPOT:
		run_random();
	default:
		run_idle();
	}
}
