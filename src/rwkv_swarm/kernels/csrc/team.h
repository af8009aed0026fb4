/* A team of threads for one kernel call: created, run in lockstep with barriers, joined.
 *
 * Why per call and not a persistent pool: the calls that use more than one thread are the
 * memory-bound steps of large models (milliseconds), where creating a thread costs tens of
 * microseconds; idle threads between calls would burn a core the rest of the program (and
 * PyTorch's own pool) needs. Which thread count wins is measured in Python (paths.py).
 */
#ifndef RWKV7_TEAM_H
#define RWKV7_TEAM_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define TEAM_MAX 64

typedef struct {
    int n;
    atomic_int count, sense;
} Team;

typedef void (*team_fn)(void *arg, int tid, Team *team);

/* Every thread of the team waits here until all have arrived. `local` is the thread's own
 * sense flag, 0 at the start. Spins briefly, then yields: on a loaded machine a spinning
 * thread would hold the core its partner needs. */
static inline void team_barrier(Team *t, int *local) {
    if (t->n == 1) return;
    int s = !*local;
    *local = s;
    if (atomic_fetch_add_explicit(&t->count, 1, memory_order_acq_rel) == t->n - 1) {
        atomic_store_explicit(&t->count, 0, memory_order_relaxed);
        atomic_store_explicit(&t->sense, s, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&t->sense, memory_order_acquire) != s; spins++) {
        if (spins > 4000) sched_yield();
    }
}

typedef struct {
    team_fn fn;
    void *arg;
    int tid;
    Team *team;
    atomic_int *go;  /* 0: wait, 1: run, -1: the team could not be formed, return */
} TeamJob;

static void *team_entry(void *p) {
    TeamJob *j = p;
    int go;
    while ((go = atomic_load_explicit(j->go, memory_order_acquire)) == 0) sched_yield();
    if (go > 0) j->fn(j->arg, j->tid, j->team);
    return NULL;
}

/* Runs fn(arg, tid, team) on n threads (the caller is thread 0). Members start only once all
 * exist; if one cannot be created, the caller runs fn alone (team->n == 1). */
static inline void team_run(int n, team_fn fn, void *arg) {
    pthread_t th[TEAM_MAX];
    TeamJob jobs[TEAM_MAX];
    Team team;
    atomic_int go;
    n = n < 1 ? 1 : (n > TEAM_MAX ? TEAM_MAX : n);
    atomic_init(&team.count, 0);
    atomic_init(&team.sense, 0);
    atomic_init(&go, 0);
    int started = 1;
    for (int t = 1; t < n; t++, started++) {
        jobs[t] = (TeamJob){fn, arg, t, &team, &go};
        if (pthread_create(&th[t], NULL, team_entry, &jobs[t]) != 0) break;
    }
    team.n = started == n ? n : 1;
    atomic_store_explicit(&go, started == n ? 1 : -1, memory_order_release);
    fn(arg, 0, &team);
    for (int t = 1; t < started; t++) pthread_join(th[t], NULL);
}

/* [lo, hi) of n items for thread tid of nt, in multiples of `align` (the last takes the rest). */
static inline void team_split(int n, int tid, int nt, int align, int *lo, int *hi) {
    int blocks = (n + align - 1) / align;
    int b0 = (int)((long)blocks * tid / nt), b1 = (int)((long)blocks * (tid + 1) / nt);
    *lo = b0 * align < n ? b0 * align : n;
    *hi = b1 * align < n ? b1 * align : n;
}

#endif
