/* A team of threads for one kernel call, on OpenMP.
 *
 * Why OpenMP and not threads of our own: the library links libgomp.so.1, and where PyTorch
 * has loaded its own libgomp.so.1 (pip wheels do) the loader resolves ours to that same
 * runtime, so our teams run on PyTorch's pool. Threads of our own competed for the cores with
 * that pool's workers, which spin for a while after every PyTorch op: a two-thread WKV took
 * 5 ms alone and 11 ms between PyTorch GEMMs. Built without OpenMP, a team has one thread.
 * Which team size is fastest is measured in Python (paths.py).
 */
#ifndef RWKV7_TEAM_H
#define RWKV7_TEAM_H

#ifdef _OPENMP
#include <omp.h>
#endif

#define TEAM_MAX 64

typedef struct {
    int n;
} Team;

typedef void (*team_fn)(void *arg, int tid, Team *team);

/* Every thread of the team waits here until all have arrived. */
static inline void team_barrier(Team *t) {
    if (t->n > 1) {
#pragma omp barrier
    }
}

/* A requested team size, clamped to 1..TEAM_MAX. */
static inline int team_size(int n) { return n < 1 ? 1 : (n > TEAM_MAX ? TEAM_MAX : n); }

/* Runs fn(arg, tid, team) on up to n threads (the caller is thread 0); fn must split its
 * work by team->n, which may be smaller than n. */
static inline void team_run(int n, team_fn fn, void *arg) {
    n = team_size(n);
#ifdef _OPENMP
    if (n > 1) {
#pragma omp parallel num_threads(n)
        {
            Team t = {omp_get_num_threads()};
            fn(arg, omp_get_thread_num(), &t);
        }
        return;
    }
#endif
    Team t = {1};
    fn(arg, 0, &t);
}

/* [lo, hi) of n items for thread tid of nt, in multiples of `align` (the last takes the rest). */
static inline void team_split(int n, int tid, int nt, int align, int *lo, int *hi) {
    int blocks = (n + align - 1) / align;
    int b0 = (int)((long)blocks * tid / nt), b1 = (int)((long)blocks * (tid + 1) / nt);
    *lo = b0 * align < n ? b0 * align : n;
    *hi = b1 * align < n ? b1 * align : n;
}

#endif
