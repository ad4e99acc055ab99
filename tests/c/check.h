/*
 * check.h - the C test programs' one assertion helper: CHECK counts a passed
 * or failed condition and prints each failure with its place; CHECK_RC
 * compares a call's return code (0 or -errno); check_summary() prints the
 * closing "N passed, M failed" line the Python harness reads and returns
 * the exit status.
 */
#ifndef KD_TEST_CHECK_H
#define KD_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int passed, failed;

#define CHECK(cond, ...)                                                  \
	do {                                                              \
		if (cond) {                                               \
			passed++;                                         \
		} else {                                                  \
			failed++;                                         \
			printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			printf(__VA_ARGS__);                              \
			printf("\n");                                     \
		}                                                         \
	} while (0)

#define CHECK_RC(expr, want)                                              \
	do {                                                              \
		int rc_ = (expr);                                         \
		CHECK(rc_ == (want), "%s = %d (%s), want %d", #expr, rc_, \
		      strerror(-rc_), (want));                            \
	} while (0)

static inline int check_summary(void)
{
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}

#endif /* KD_TEST_CHECK_H */
