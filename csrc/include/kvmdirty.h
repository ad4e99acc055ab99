/*
 * kvmdirty.h - the public header of libkvmdirty, a dirty-page-tracking
 * kernel-interface emulator: the one file C users include.
 *
 *  kvmdirty/vm.h       the VM API: memslots, vCPUs, guest writes, dirty
 *                      logs (GET/CLEAR, rings, collect), counters, and the
 *                      conventions every call follows;
 *  kvmdirty/migrate.h  what is built on it: vCPU thread pools, the wire
 *                      format and its destination, the scan-and-send loop,
 *                      workload generators.
 *
 * Each also stands alone (migrate.h includes vm.h); neither includes this
 * file.
 */
#ifndef KVMDIRTY_H
#define KVMDIRTY_H

#include "kvmdirty/vm.h"
#include "kvmdirty/migrate.h"

#endif /* KVMDIRTY_H */
