/*
 * real/uffd/uffd_segv.c - the mprotect mode's process-wide state: the one
 * tracker in that mode, and the SIGSEGV handler that records a write to a
 * protected tracked page and makes it writable (ordering: uffd_internal.h).
 * The handler is installed on first use and never removed; faults that are
 * not ours go to the previous disposition.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/mman.h>

#include "uffd_internal.h"

static pthread_mutex_t g_mp_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kd_uffd *g_mp_owner; /* the one mprotect tracker; __atomic */
static unsigned g_sig_inflight;    /* SIGSEGV handlers inside g_mp_owner */
static bool g_handler_installed;   /* under g_mp_lock; never uninstalled */
static struct sigaction g_old_segv; /* what we chain to */

/* Pass a fault that is not ours to whoever handled SIGSEGV before us. */
static void chain_segv(int sig, siginfo_t *si, void *uc)
{
	const struct sigaction *o = &g_old_segv;

	if (o->sa_flags & SA_SIGINFO) {
		if (o->sa_sigaction) {
			o->sa_sigaction(sig, si, uc);
			return;
		}
	} else if (o->sa_handler != SIG_DFL && o->sa_handler != SIG_IGN) {
		o->sa_handler(sig);
		return;
	}
	/* default action: restore it; a real fault re-executes and kills us
	 * (the kernel also forces the default for an ignored fault signal) */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof dfl);
	dfl.sa_handler = SIG_DFL;
	sigaction(SIGSEGV, &dfl, NULL);
	if (si->si_code <= 0)
		raise(sig);
}

/*
 * The SIGSEGV handler of the mprotect mode. Async-signal-safe: atomics and
 * mprotect(2) only; saves errno. A write to a protected tracked page is
 * recorded and the page made writable (ordering at the top). When the kernel
 * cannot split the VMA (vm.max_map_count reached, ENOMEM) it widens to the
 * page's 64-page group, then to the whole slot: those pages are recorded
 * dirty (over-reported, never lost).
 */
static void segv_handler(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	bool handled = false;

	__atomic_fetch_add(&g_sig_inflight, 1, __ATOMIC_SEQ_CST);
	struct kd_uffd *u = __atomic_load_n(&g_mp_owner, __ATOMIC_SEQ_CST);
	if (u && si->si_code == SEGV_ACCERR) {
		uintptr_t a = (uintptr_t)si->si_addr;
		struct uffd_range *s = uffd_table_find_addr(__atomic_load_n(&u->table, __ATOMIC_SEQ_CST), a);
		if (s) {
			uint64_t p = (a - s->start) >> PG_SHIFT;
			uint64_t g0 = p & ~63ull, g1 = g0 + 64 < s->npages ? g0 + 64 : s->npages;
			/* record, make writable, record again if a collector
			 * took the bit meanwhile (see the top of the file) */
			stat_add(&u->st.ioctls, 1);
			mark_dirty(s, p, p + 1);
			if (!mprotect((void *)(s->start + (p << PG_SHIFT)), PG_SIZE,
				      PROT_READ | PROT_WRITE)) {
				mark_dirty(s, p, p + 1);
				handled = true;
			} else {
				mark_dirty(s, g0, g1);
				if (!mprotect((void *)(s->start + (g0 << PG_SHIFT)),
					      (g1 - g0) << PG_SHIFT, PROT_READ | PROT_WRITE)) {
					mark_dirty(s, g0, g1);
					handled = true;
				} else {
					mark_dirty(s, 0, s->npages);
					if (!mprotect((void *)s->start, s->end - s->start,
						      PROT_READ | PROT_WRITE)) {
						mark_dirty(s, 0, s->npages);
						handled = true;
					}
				}
				stat_add(&u->st.fallbacks, 1);
			}
			if (handled)
				stat_add(&u->st.faults, 1);
		}
	}
	__atomic_fetch_sub(&g_sig_inflight, 1, __ATOMIC_SEQ_CST);
	errno = saved;
	if (!handled)
		chain_segv(sig, si, uc);
}

/* Under g_mp_lock. */
static int install_segv_handler(void)
{
	struct sigaction sa;

	if (g_handler_installed)
		return 0;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = segv_handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSEGV, &sa, &g_old_segv))
		return -errno;
	g_handler_installed = true;
	return 0;
}

int uffd_mp_claim(struct kd_uffd *u)
{
	int r;

	pthread_mutex_lock(&g_mp_lock);
	if (__atomic_load_n(&g_mp_owner, __ATOMIC_SEQ_CST))
		r = -EBUSY;
	else
		r = install_segv_handler();
	if (!r)
		__atomic_store_n(&g_mp_owner, u, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&g_mp_lock);
	return r;
}

void uffd_mp_release(struct kd_uffd *u)
{
	pthread_mutex_lock(&g_mp_lock);
	if (__atomic_load_n(&g_mp_owner, __ATOMIC_SEQ_CST) == u)
		__atomic_store_n(&g_mp_owner, NULL, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&g_mp_lock);
}

unsigned uffd_mp_inflight(void)
{
	return __atomic_load_n(&g_sig_inflight, __ATOMIC_SEQ_CST);
}
