/* The row kernel (rwkv7_rows.c) as other kernels call it: prepared once, run many times. */
#ifndef RWKV7_ROWS_H
#define RWKV7_ROWS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const float *w;             /* packed W^T (in, ld), zero beyond `out` */
    const float *left, *right;  /* noise (pairs, rank, in), (pairs, rank, out), or NULL */
    int in, out, ld;
} Mat;

typedef struct {
    int R, C, H, N, L, F, D[4], n_out, in0, rank, tile;
    float sigma;
    const int *member;                 /* (R,): member per row, -1 for none */
    const Mat *mat;                    /* L * NMAT + NGMAT */
    const float *const *vp;            /* L * NVEC + NGVEC vectors */
    const int64_t *vs;                 /* their strides per member (0: shared) */
    const float *x_in;                 /* (R, in0) observations, or (R, C) embedded */
    const float *att_in, *wkv_in, *ffn_in;
    float *att_out, *wkv_out, *ffn_out, *out;
    int tile0, threads;                 /* rows_prepare's: tile size asked, team size */
    size_t per_thread;
    float *scratch;
} Rows;

int rows_prepare(Rows *s, int cap, const int *dims, const void *const *mats,
                 const int *mat_dims, const float *const *vecs, const int64_t *vec_strides,
                 float sigma, int threads);
void rows_run(Rows *s, int R, const int *member, const float *x_in, const float *att_in,
              const float *wkv_in, const float *ffn_in, float *att_out, float *wkv_out,
              float *ffn_out, float *out);
void rows_release(Rows *s);

#endif
