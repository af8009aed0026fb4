/* The native rollout: n CartPole copies and a population's row step in one loop.
 *
 * Why: stepping a population through a world from Python costs about 150 us a step whatever
 * the batch (the world's numpy calls, the observation pipeline, the rollout's masks, the
 * kernel's call), and a rollout pays it through its longest episode. With the tiny models of
 * the configs the rows themselves cost about 1 us each, so that fixed cost was the whole
 * step, and splitting a population over nodes did not shorten a generation. Here a step costs
 * its rows and a few microseconds more.
 *
 * It does, operation for operation in float64, what node/rollout.py does with GymEnv over the
 * numpy CartPole world (node/envs/cartpole.py, gymnasium's arithmetic) and the row kernel:
 *   - each step: the copies' last observations (non-finite ones zeroed and counted), the
 *     batch's rows through rows_run, argmax actions (non-finite outputs act 0 and count as
 *     diverged), the live copies' physics, their new observations masked, added to the
 *     pending statistics (Chan's merge, rows in copy order), normalised and clipped;
 *   - the batch is compacted to its live copies once they fall below `compact` of it, the
 *     dropped rows' states going to the full state, as the Python rollout does; a row's bits
 *     never depend on the batch, so returns and states are those of the Python loop.
 * Contraction into FMAs is off in this file: numpy rounds every product.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "rows.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* cartpole.py's constants, computed as Python computes them. */
#define GRAVITY 9.8
#define MASSPOLE 0.1
#define TOTAL_MASS (MASSPOLE + 1.0)
#define LENGTH 0.5
#define POLEMASS_LENGTH (MASSPOLE * LENGTH)
#define FORCE_MAG 10.0
#define TAU 0.02
#define X_THRESHOLD 2.4

/* One rollout's buffers and position; node/native_rollout.py's CartRun mirrors it. */
typedef struct {
    int32_t n, n_keep, n_out, max_steps, episode_limit, sutton_barto, normalize, L;
    int32_t C, HNN, t, batch, live, pad_;
    int64_t computed;
    double compact, clip;
    const int64_t *keep;            /* (n_keep,) kept entries of the 4 raw ones */
    const double *shift, *inv_std;  /* (n_keep,) the frozen normalisation */
    double *pending;                /* count, mean (n_keep), m2 (n_keep) */
    double *cart;                   /* (4, n) x, x_dot, theta, theta_dot */
    float *obs;                     /* (n, n_keep) each copy's last observation */
    int32_t *rows, *member;         /* (n,) copy and member of batch row b */
    float *att, *wkv, *ffn;         /* the batch's state (L, batch, C | HNN | C) */
    float *att_full, *wkv_full, *ffn_full;  /* (L, n, ...) */
    float *x, *out;                 /* (n, n_keep), (n, n_out) */
    double *xs;                     /* (n, n_keep) the step's kept raw values */
    double *returns;
    int64_t *steps;
    uint8_t *alive, *diverged, *bad_obs;
    int32_t *action;                /* (n,) per batch row */
} CartRun;

/* Rows [b, b + 1) of each layer of a (L, R, w) state -> row `dst` of an (L, Rd, w) one. */
static void move_row(float *dst, int Rd, int to, const float *src, int R, int b, int L,
                     size_t w) {
    for (int l = 0; l < L; l++)
        memmove(dst + ((size_t)l * Rd + to) * w, src + ((size_t)l * R + b) * w,
                sizeof(float) * w);
}

/* Each batch row's state (only the done copies' where `done_only`) to its copy's place in the
 * full state. */
static void save_rows(CartRun *r, int done_only) {
    for (int b = 0; b < r->batch; b++) {
        const int i = r->rows[b];
        if (done_only && r->alive[i]) continue;
        move_row(r->att_full, r->n, i, r->att, r->batch, b, r->L, r->C);
        move_row(r->wkv_full, r->n, i, r->wkv, r->batch, b, r->L, r->HNN);
        move_row(r->ffn_full, r->n, i, r->ffn, r->batch, b, r->L, r->C);
    }
}

/* Rows keep[0..k) (ascending) of an (L, R, w) state as an (L, k, w) one, in place: every
 * move goes to a lower address than any row still to be read. */
static void gather(float *buf, int L, int R, const int32_t *keep, int k, size_t w) {
    for (int l = 0; l < L; l++)
        for (int q = 0; q < k; q++)
            memmove(buf + ((size_t)l * k + q) * w, buf + ((size_t)l * R + keep[q]) * w,
                    sizeof(float) * w);
}

/* The batch down to its live copies, in copy order; the others' states go to the full one. */
static void compact_batch(CartRun *r) {
    int32_t *keep = r->action;  /* free until this step's actions are written */
    int k = 0;
    save_rows(r, 1);
    for (int b = 0; b < r->batch; b++)
        if (r->alive[r->rows[b]]) keep[k++] = b;
    gather(r->att, r->L, r->batch, keep, k, r->C);
    gather(r->wkv, r->L, r->batch, keep, k, r->HNN);
    gather(r->ffn, r->L, r->batch, keep, k, r->C);
    for (int q = 0; q < k; q++) r->rows[q] = r->rows[keep[q]], r->member[q] = r->member[keep[q]];
    r->batch = k;
}

/* The kernel's inputs: each batch row's copy's last observation, zeroed where not finite. */
static void inputs(CartRun *r) {
    const int d = r->n_keep;
    for (int b = 0; b < r->batch; b++) {
        const int i = r->rows[b];
        const float *o = r->obs + (size_t)i * d;
        int ok = 1;
        for (int j = 0; j < d; j++) ok &= isfinite(o[j]) != 0;
        if (!ok && r->alive[i]) r->bad_obs[i] = 1;
        for (int j = 0; j < d; j++) r->x[(size_t)b * d + j] = ok ? o[j] : 0.0f;
    }
}

/* Argmax of each batch row's outputs (first of equals); non-finite outputs act on zeros. */
static void actions(CartRun *r) {
    for (int b = 0; b < r->batch; b++) {
        const float *o = r->out + (size_t)b * r->n_out;
        int ok = 1, best = 0;
        for (int j = 0; j < r->n_out; j++) ok &= isfinite(o[j]) != 0;
        if (!ok) {
            const int i = r->rows[b];
            if (r->alive[i] && !r->bad_obs[i]) r->diverged[i] = 1;
        } else {
            for (int j = 1; j < r->n_out; j++)
                if (o[j] > o[best]) best = j;
        }
        r->action[b] = best;
    }
}

/* cartpole.py's step of copy i; returns whether it terminated (before truncation). */
static int physics(CartRun *r, int i, int action) {
    double *s = r->cart;
    const size_t n = r->n;
    const double x = s[i], x_dot = s[n + i], theta = s[2 * n + i], theta_dot = s[3 * n + i];
    const double force = (action - 0.5 > 0 ? 1.0 : -1.0) * FORCE_MAG;
    const double costheta = cos(theta), sintheta = sin(theta);
    const double temp = (force + POLEMASS_LENGTH * (theta_dot * theta_dot) * sintheta) /
                        TOTAL_MASS;
    const double thetaacc = (GRAVITY * sintheta - costheta * temp) /
        (LENGTH * (4.0 / 3.0 - MASSPOLE * (costheta * costheta) / TOTAL_MASS));
    const double xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS;
    s[i] = x + x_dot * TAU;
    s[n + i] = x_dot + xacc * TAU;
    s[2 * n + i] = theta + theta_dot * TAU;
    s[3 * n + i] = theta_dot + thetaacc * TAU;
    const double theta_threshold = 12 * 2 * M_PI / 360;
    return fabs(s[i]) > X_THRESHOLD || fabs(s[2 * n + i]) > theta_threshold;
}

/* Copy i's kept raw values into `row` (the float32 observation, then float64). */
static void keep_raw(const CartRun *r, int i, double *row) {
    for (int j = 0; j < r->n_keep; j++)
        row[j] = (double)(float)r->cart[(size_t)r->keep[j] * r->n + i];
}

/* normalize.py's observe: the step's k rows merged into the pending statistics. */
static void observe(CartRun *r, int k) {
    const int d = r->n_keep;
    double *p = r->pending, *ma = p + 1, *sa = p + 1 + d;
    const double na = p[0], nb = k;
    for (int j = 0; j < d; j++) {
        double sum = r->xs[j], sq;
        for (int q = 1; q < k; q++) sum += r->xs[(size_t)q * d + j];
        const double mb = sum / k;
        sq = (r->xs[j] - mb) * (r->xs[j] - mb);
        for (int q = 1; q < k; q++) {
            const double dev = r->xs[(size_t)q * d + j] - mb;
            sq += dev * dev;
        }
        if (na == 0) {
            ma[j] = mb, sa[j] = sq;
        } else {
            const double all = na + nb, delta = mb - ma[j];
            ma[j] = ma[j] + delta * (nb / all);
            sa[j] = sa[j] + sq + delta * delta * (na * nb / all);
        }
    }
    p[0] = na == 0 ? nb : na + nb;
}

/* The copy's observation as the policy sees it: normalised, clipped, float32. */
static void show(CartRun *r, int i, const double *row) {
    float *o = r->obs + (size_t)i * r->n_keep;
    for (int j = 0; j < r->n_keep; j++) {
        double y = row[j];
        if (r->normalize) {
            y = (y - r->shift[j]) * r->inv_std[j];
            y = y < -r->clip ? -r->clip : y;  /* np.maximum then np.minimum: NaN stays NaN */
            y = y > r->clip ? r->clip : y;
        }
        o[j] = (float)y;
    }
}

/* The world's step for every live copy, in copy order, and the rollout's records. */
static void world_step(CartRun *r) {
    int k = 0;
    for (int b = 0; b < r->batch; b++) {
        const int i = r->rows[b];
        if (!r->alive[i]) continue;
        int ended = physics(r, i, r->action[b]);
        const double reward = r->sutton_barto ? -(double)ended : 1.0;
        ended |= r->t + 1 >= r->episode_limit;
        keep_raw(r, i, r->xs + (size_t)k++ * r->n_keep);
        show(r, i, r->xs + (size_t)(k - 1) * r->n_keep);
        r->returns[i] += reward;
        r->steps[i] += 1;
        if (ended) r->alive[i] = 0, r->live--;
    }
    if (r->normalize && k > 0) observe(r, k);
}

/* Up to `chunk` steps (fewer where every copy is done or max_steps is reached). The row
 * kernel's tables as rwkv7_rows takes them. Returns 0, or -1 when memory ran out. */
int rwkv7_cartpole_run(CartRun *r, int chunk, int threads, const int *dims,
                       const void *const *mats, const int *mat_dims,
                       const float *const *vecs, const int64_t *vec_strides, float sigma) {
    Rows s;
    if (r->live <= 0 || r->t >= r->max_steps) return 0;
    if (rows_prepare(&s, r->batch, dims, mats, mat_dims, vecs, vec_strides, sigma, threads))
        return -1;
    for (int c = 0; c < chunk && r->live > 0 && r->t < r->max_steps; c++, r->t++) {
        if (r->live < r->compact * r->batch) compact_batch(r);
        inputs(r);
        rows_run(&s, r->batch, r->member, r->x, r->att, r->wkv, r->ffn, r->att, r->wkv, r->ffn,
                 r->out);
        r->computed += r->batch;
        actions(r);
        world_step(r);
    }
    rows_release(&s);
    if (r->live <= 0 || r->t >= r->max_steps) save_rows(r, 0);
    return 0;
}
