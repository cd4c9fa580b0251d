/* Fused CPU kernels of masked training (pipeline/models/_fused.py loads them with ctypes).
 *
 * Masked training spends most of its overhead in passes over the weights: |score|, the exact
 * top-c threshold, the mask as floats, w * m, and in backward g * m, g * w, the sign of the
 * score and the gate that zeroes frozen weights. Each torch op is one pass over memory; here
 * the forward is three passes (two reading the scores for the threshold, one writing the
 * masked weight) and the backward one.
 *
 * Every result is bit-identical to the torch ops it replaces (tests/pipeline_tests/
 * test_fused.py): the same products in the same order, the same exact threshold.
 *
 * The threshold is the exact k-th largest |s| by radix select on the float bits: non-negative
 * floats order like their bit patterns, so a histogram of the high bits of |s| finds the
 * bin of the answer, and a histogram of the low 16 bits of the values in that bin finds it.
 *
 * Work is split over `threads` threads in contiguous chunks (1 thread for small tensors, where
 * waking threads costs more than the pass); see run_jobs.
 */
#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64
#define SUBS 4 /* interleaved sub-histograms of the first pass: repeated bins do not stall */

static inline uint32_t abs_bits(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return b & 0x7fffffffu;
}

/* The radix passes over the 31 bits of |s| (the sign bit is 0): the digit of pass p is bits
 * [lo, hi) of the values whose bits above hi equal the prefix found so far. The first pass
 * counts every value into 32768 bins; the second counts the few values of one bin. (Measured
 * on a 4M-score layer: two passes beat three with 12/10/9-bit digits by 1.6x; the first pass's
 * random increments, not the reads, are the cost.) */
#define PASSES 2
static const int PASS_HI[PASSES] = {31, 16};
static const int PASS_LO[PASSES] = {16, 0};

typedef struct {
    const float *s;
    int64_t lo, hi;
    uint32_t *hist; /* SUBS x bins for pass 0, bins otherwise */
    int pass;
    uint32_t prefix;
} hist_job;

static void *hist_run(void *arg) {
    hist_job *j = (hist_job *)arg;
    const float *restrict s = j->s;
    uint32_t *restrict h = j->hist;
    const int shift = PASS_LO[j->pass], hi = PASS_HI[j->pass];
    const uint32_t mask = (1u << (hi - shift)) - 1u, bins = mask + 1u;
    int64_t i = j->lo;
    if (j->pass == 0) {
        for (; i + SUBS <= j->hi; i += SUBS)
            for (int u = 0; u < SUBS; u++) h[u * bins + (abs_bits(s[i + u]) >> shift)]++;
        for (; i < j->hi; i++) h[abs_bits(s[i]) >> shift]++;
        for (uint32_t b = 0; b < bins; b++)
            for (int u = 1; u < SUBS; u++) h[b] += h[u * bins + b];
    } else {
        for (; i < j->hi; i++) {
            uint32_t b = abs_bits(s[i]);
            if ((b >> hi) == j->prefix) h[(b >> shift) & mask]++;
        }
    }
    return NULL;
}

static int clamp_threads(int threads, int64_t n) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (n < (int64_t)1 << 18) threads = 1;
    return threads;
}

/* Runs fn(jobs[0..threads)) in parallel on the libgomp thread pool that PyTorch's CPU ops use
 * (the library is built with -fopenmp and the process loads one libgomp), so its threads,
 * still spinning after the last matmul, pick the jobs up at once. POSIX threads of our own
 * competed with them for the cores (measured: a gradient pass took 4.5 ms with two of them
 * after a matmul against 3.0 ms alone). A compiler without OpenMP ignores the pragma and runs
 * the jobs one after another. */
static void run_jobs(void *(*fn)(void *), void *jobs, size_t job_size, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) fn((char *)jobs + t * job_size);
}

/* Histogram of pass `pass` summed over threads into out[bins]; 0, or -1 if memory ran out. */
static int histogram(const float *s, int64_t n, int pass, uint32_t prefix, int64_t *out,
                     int threads) {
    const uint32_t bins = 1u << (PASS_HI[pass] - PASS_LO[pass]);
    const size_t per = (size_t)bins * (pass == 0 ? SUBS : 1);
    hist_job jobs[MAX_THREADS];
    uint32_t *local = calloc((size_t)threads * per, sizeof(uint32_t));
    if (!local) return -1;
    for (int t = 0; t < threads; t++) {
        jobs[t] = (hist_job){s, n * t / threads, n * (t + 1) / threads, local + t * per, pass,
                             prefix};
    }
    run_jobs(hist_run, jobs, sizeof(hist_job), threads);
    memset(out, 0, bins * sizeof(int64_t));
    for (int t = 0; t < threads; t++)
        for (uint32_t b = 0; b < bins; b++) out[b] += local[t * per + b];
    free(local);
    return 0;
}

/* The exact k-th largest (1-based, 1 <= k <= n) of |s[0..n)|. Returns -1.0f if memory ran out
 * (the caller falls back to torch). Counts are uint32 per thread chunk: n < 2^32 per chunk. */
float tp_kth_largest_abs(const float *s, int64_t n, int64_t k, int threads) {
    threads = clamp_threads(threads, n);
    int64_t *hist = malloc(((size_t)1 << 16) * sizeof(int64_t));
    if (!hist) return -1.0f;
    uint32_t prefix = 0;
    int64_t need = k; /* values still to pass, counted from the top, inside the prefix */
    for (int pass = 0; pass < PASSES; pass++) {
        if (histogram(s, n, pass, prefix, hist, threads)) { free(hist); return -1.0f; }
        int d = (1 << (PASS_HI[pass] - PASS_LO[pass])) - 1;
        while (d > 0 && hist[d] < need) need -= hist[d--];
        prefix = (prefix << (PASS_HI[pass] - PASS_LO[pass])) | (uint32_t)d;
    }
    free(hist);
    float out;
    memcpy(&out, &prefix, 4);
    return out;
}

/* ---- the threshold near a known one -------------------------------------------------------
 * Scores move little between training steps, so the last step's threshold brackets this
 * one: one vectorised pass counts the values above the band [lo, hi] and copies the few inside
 * it; the answer is then selected among those. Exact whenever it lies in the band, which the
 * counts prove; otherwise the caller runs the full select. */

typedef struct {
    const float *s;
    int64_t lo, hi;
    float blo, bhi;
    float *buf;
    int64_t cap, m, above;
} band_job;

static void *band_run(void *arg) {
    band_job *j = (band_job *)arg;
    const float *restrict s = j->s;
    float *restrict buf = j->buf;
    const float blo = j->blo, bhi = j->bhi;
    int64_t m = 0, above = 0, i = j->lo;
#ifdef __AVX2__
    /* 8 at a time: count above the band in vector lanes; copy the (rare) in-band values by
     * the bits of a movemask */
    const __m256 vlo = _mm256_set1_ps(blo), vhi = _mm256_set1_ps(bhi);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256i acc = _mm256_setzero_si256();
    for (; i + 8 <= j->hi; i += 8) {
        const __m256 a = _mm256_and_ps(_mm256_loadu_ps(s + i), absmask);
        const __m256 gt = _mm256_cmp_ps(a, vhi, _CMP_GT_OQ);
        acc = _mm256_sub_epi32(acc, _mm256_castps_si256(gt));
        unsigned bits = (unsigned)_mm256_movemask_ps(
            _mm256_andnot_ps(gt, _mm256_cmp_ps(a, vlo, _CMP_GE_OQ)));
        if (bits) {
            float lanes[8];
            _mm256_storeu_ps(lanes, a);
            for (; bits; bits &= bits - 1) {
                if (m < j->cap) buf[m] = lanes[__builtin_ctz(bits)];
                m++;
            }
        }
    }
    int32_t counts[8];
    _mm256_storeu_si256((__m256i *)counts, acc);
    for (int u = 0; u < 8; u++) above += counts[u];
#endif
    for (; i < j->hi; i++) {
        const float a = fabsf(s[i]);
        if (a > bhi) above++;
        else if (a >= blo) {
            if (m < j->cap) buf[m] = a;
            m++;
        }
    }
    j->m = m;
    j->above = above;
    return NULL;
}

/* The k-th largest (1-based) of a[0..m), by quickselect (reorders a); for the few values of a
 * band, where the histograms' fixed cost would dominate. */
static float select_kth_largest(float *a, int64_t m, int64_t k) {
    int64_t lo = 0, hi = m - 1, want = k - 1; /* index of the answer in descending order */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        float x = a[lo], y = a[mid], z = a[hi]; /* median of three as the pivot */
        const float pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) {
                const float t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return a[want];
    }
    return a[want];
}

/* The exact k-th largest of |s[0..n)| if it lies in [lo, hi]; -2.0f if it does not (or the
 * band holds more than n / 8 values), -1.0f if memory ran out. */
float tp_kth_largest_abs_near(const float *s, int64_t n, int64_t k, float lo, float hi,
                              int threads) {
    threads = clamp_threads(threads, n);
    const int64_t per = n / 8 / threads + 8;
    float *buf = malloc((size_t)per * threads * sizeof(float));
    if (!buf) return -1.0f;
    band_job jobs[MAX_THREADS];
    for (int t = 0; t < threads; t++)
        jobs[t] = (band_job){s, n * t / threads, n * (t + 1) / threads, lo, hi,
                             buf + t * per, per, 0, 0};
    run_jobs(band_run, jobs, sizeof(band_job), threads);
    int64_t above = 0, m = 0;
    for (int t = 0; t < threads; t++) {
        above += jobs[t].above;
        if (jobs[t].m > per) { free(buf); return -2.0f; }
        memmove(buf + m, jobs[t].buf, (size_t)jobs[t].m * sizeof(float));
        m += jobs[t].m;
    }
    float out = -2.0f;
    if (above < k && k <= above + m) out = select_kth_largest(buf, m, k - above);
    free(buf);
    return out;
}

typedef struct {
    const float *w, *s, *g;
    const uint8_t *mask, *frozen;
    float t;
    float *out, *gw, *gs;
    int64_t lo, hi;
} elem_job;

/* The loops below are written so that gcc vectorises them: restrict pointers in locals, no
 * branch inside a loop (each case of mask/scores/frozen is its own loop), compares turned
 * into 0/1 floats. m is mask[i] if a mask is given, else |s[i]| >= t, else 1. */

/* out = x * m over n values */
static inline void times_mask(const float *restrict x, const float *restrict s,
                              const uint8_t *restrict mask, float t, float *restrict out,
                              int64_t n) {
    if (mask) {
        for (int64_t i = 0; i < n; i++) out[i] = x[i] * (float)(mask[i] != 0);
    } else if (s) {
        for (int64_t i = 0; i < n; i++) out[i] = x[i] * (float)(fabsf(s[i]) >= t);
    } else {
        for (int64_t i = 0; i < n; i++) out[i] = x[i] * 1.0f;
    }
}

static void *weight_run(void *arg) {
    elem_job *j = (elem_job *)arg;
    const int64_t lo = j->lo;
    times_mask(j->w + lo, j->s ? j->s + lo : NULL, j->mask ? j->mask + lo : NULL, j->t,
               j->out + lo, j->hi - lo);
    return NULL;
}

static void *grad_run(void *arg) {
    elem_job *j = (elem_job *)arg;
    const int64_t lo = j->lo, n = j->hi - j->lo;
    const float *restrict g = j->g + lo, *restrict w = j->w + lo;
    const float *restrict s = j->s ? j->s + lo : NULL;
    const uint8_t *restrict mask = j->mask ? j->mask + lo : NULL;
    const uint8_t *restrict frozen = j->frozen ? j->frozen + lo : NULL;
    float *restrict gw = j->gw ? j->gw + lo : NULL, *restrict gs = j->gs ? j->gs + lo : NULL;
    const float t = j->t;
    if (gw && gs && s && !mask) { /* training through scores: one pass for both */
        for (int64_t i = 0; i < n; i++) {
            const float gi = g[i], si = s[i];
            const float v = gi * (float)(fabsf(si) >= t);
            gw[i] = (frozen && frozen[i]) ? 0.0f : v;
            gs[i] = (gi * w[i]) * ((float)(si > 0.0f) - (float)(si < 0.0f));
        }
        return NULL;
    }
    if (gw) {
        times_mask(g, s, mask, t, gw, n);
        if (frozen) /* masked_fill: +0.0 at frozen positions */
            for (int64_t i = 0; i < n; i++) gw[i] = frozen[i] ? 0.0f : gw[i];
    }
    if (gs) /* torch's sign: 1, -1, or 0 for a zero score */
        for (int64_t i = 0; i < n; i++)
            gs[i] = (g[i] * w[i]) * ((float)(s[i] > 0.0f) - (float)(s[i] < 0.0f));
    return NULL;
}

/* Runs fn over [0, n) in `threads` contiguous chunks of the job `proto`. */
static void run_elem(void *(*fn)(void *), elem_job proto, int64_t n, int threads) {
    elem_job jobs[MAX_THREADS];
    threads = clamp_threads(threads, n);
    for (int t = 0; t < threads; t++) {
        jobs[t] = proto;
        jobs[t].lo = n * t / threads;
        jobs[t].hi = n * (t + 1) / threads;
    }
    run_jobs(fn, jobs, sizeof(elem_job), threads);
}

/* out = w * m (m: mask, else |s| >= t, else 1; mask and s may be NULL) */
void tp_masked_weight(const float *w, const float *s, const uint8_t *mask, float t, float *out,
                      int64_t n, int threads) {
    elem_job p = {w, s, NULL, mask, NULL, t, out, NULL, NULL, 0, 0};
    run_elem(weight_run, p, n, threads);
}

/* gw = g * m, zero where frozen; gs = (g * w) * sign(s), the straight-through gradient of the
 * scores. gw, gs, mask, frozen may be NULL; s must be given with gs. */
void tp_masked_grad(const float *g, const float *w, const float *s, const uint8_t *mask,
                    const uint8_t *frozen, float t, float *gw, float *gs, int64_t n,
                    int threads) {
    elem_job p = {w, s, g, mask, frozen, t, NULL, gw, gs, 0, 0};
    run_elem(grad_run, p, n, threads);
}
