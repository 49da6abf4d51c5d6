/* The compiled allocator's core; see wfm_alloc.h for the data structures
 * and reference.py for the rules. */
#include "wfm_alloc.h"

#include <stdlib.h>
#include <string.h>

/* --- order key ----------------------------------------------------------- */

static inline uint64_t fill_level(int64_t free, int64_t cap) {
    if (cap == 0) return WFM_LEVELS;
    if ((uint64_t)free < (1ull << 43)) return ((uint64_t)free * WFM_LEVELS) / (uint64_t)cap;
    return (uint64_t)(((unsigned __int128)(uint64_t)free * WFM_LEVELS) / (uint64_t)cap);
}

static inline uint64_t order_key(const wfm_alloc *a, int32_t i) {
    uint64_t free = fill_level(a->free_c[i], a->cap_c[i]) + fill_level(a->free_m[i], a->cap_m[i]) +
                    fill_level(a->free_s[i], a->cap_s[i]);
    uint64_t level = a->policy == WFM_POLICY_PACK ? free : 3ull * WFM_LEVELS - free;
    return (level << 32) | (uint32_t)i;
}

static inline int fits(const wfm_alloc *a, int32_t i, int32_t c, int64_t m, int64_t s) {
    return a->free_c[i] >= c && a->free_m[i] >= m && a->free_s[i] >= s;
}

/* --- treap over a forest -------------------------------------------------- */

static inline void pull(wfm_forest *f, const wfm_alloc *a, int32_t v) {
    int32_t mc = a->free_c[v];
    int64_t mm = a->free_m[v], ms = a->free_s[v];
    int32_t l = f->left[v], r = f->right[v];
    if (l >= 0) {
        if (f->max_c[l] > mc) mc = f->max_c[l];
        if (f->max_m[l] > mm) mm = f->max_m[l];
        if (f->max_s[l] > ms) ms = f->max_s[l];
    }
    if (r >= 0) {
        if (f->max_c[r] > mc) mc = f->max_c[r];
        if (f->max_m[r] > mm) mm = f->max_m[r];
        if (f->max_s[r] > ms) ms = f->max_s[r];
    }
    f->max_c[v] = mc;
    f->max_m[v] = mm;
    f->max_s[v] = ms;
}

/* Split tree r into keys < k (*lo) and keys >= k (*hi). */
static void split(wfm_forest *f, const wfm_alloc *a, int32_t r, uint64_t k, int32_t *lo,
                  int32_t *hi) {
    if (r < 0) {
        *lo = *hi = -1;
        return;
    }
    if (a->key[r] < k) {
        split(f, a, f->right[r], k, &f->right[r], hi);
        *lo = r;
    } else {
        split(f, a, f->left[r], k, lo, &f->left[r]);
        *hi = r;
    }
    pull(f, a, r);
}

static int32_t merge(wfm_forest *f, const wfm_alloc *a, int32_t l, int32_t r) {
    if (l < 0) return r;
    if (r < 0) return l;
    if (a->prio[l] > a->prio[r]) {
        f->right[l] = merge(f, a, f->right[l], r);
        pull(f, a, l);
        return l;
    }
    f->left[r] = merge(f, a, l, f->left[r]);
    pull(f, a, r);
    return r;
}

static int32_t tinsert(wfm_forest *f, const wfm_alloc *a, int32_t r, int32_t x) {
    if (r < 0 || a->prio[x] > a->prio[r]) {
        split(f, a, r, a->key[x], &f->left[x], &f->right[x]);
        pull(f, a, x);
        return x;
    }
    if (a->key[x] < a->key[r])
        f->left[r] = tinsert(f, a, f->left[r], x);
    else
        f->right[r] = tinsert(f, a, f->right[r], x);
    pull(f, a, r);
    return r;
}

/* Remove x (present, with its current key) from tree r. */
static int32_t tdelete(wfm_forest *f, const wfm_alloc *a, int32_t r, int32_t x) {
    if (r == x) return merge(f, a, f->left[x], f->right[x]);
    if (a->key[x] < a->key[r])
        f->left[r] = tdelete(f, a, f->left[r], x);
    else
        f->right[r] = tdelete(f, a, f->right[r], x);
    pull(f, a, r);
    return r;
}

/* The first datanode in key order under r that fits (c, m, s), or -1. */
static int32_t find_first(const wfm_forest *f, const wfm_alloc *a, int32_t r, int32_t c,
                          int64_t m, int64_t s) {
    while (r >= 0) {
        if (f->max_c[r] < c || f->max_m[r] < m || f->max_s[r] < s) return -1;
        int32_t found = find_first(f, a, f->left[r], c, m, s);
        if (found >= 0) return found;
        if (fits(a, r, c, m, s)) return r;
        r = f->right[r]; /* tail position: iterate */
    }
    return -1;
}

static void unlink_node(wfm_alloc *a, int32_t i) {
    a->all.root[0] = tdelete(&a->all, a, a->all.root[0], i);
    int32_t l = a->loc[i];
    if (l >= 0) a->byloc.root[l] = tdelete(&a->byloc, a, a->byloc.root[l], i);
}

static void link_node(wfm_alloc *a, int32_t i) {
    a->key[i] = order_key(a, i);
    a->all.root[0] = tinsert(&a->all, a, a->all.root[0], i);
    int32_t l = a->loc[i];
    if (l >= 0) a->byloc.root[l] = tinsert(&a->byloc, a, a->byloc.root[l], i);
}

/* --- core bitsets --------------------------------------------------------- */

static void take_lowest(uint64_t *w, int32_t c, int32_t *out) {
    for (int j = 0; c > 0 && j < WFM_CORE_WORDS; j++) {
        uint64_t x = w[j];
        if (!x) continue;
        int pc = __builtin_popcountll(x);
        if (pc <= c) {
            c -= pc;
            w[j] = 0;
        } else {
            uint64_t keep = x;
            for (int k = 0; k < c; k++) keep &= keep - 1;
            w[j] = keep;
            x &= ~keep;
            c = 0;
        }
        while (x) {
            *out++ = j * 64 + __builtin_ctzll(x);
            x &= x - 1;
        }
    }
}

/* --- life cycle ----------------------------------------------------------- */

static int forest_init(wfm_forest *f, int32_t n, int32_t ntrees) {
    size_t nn = n > 0 ? (size_t)n : 1;
    f->left = malloc(nn * sizeof *f->left);
    f->right = malloc(nn * sizeof *f->right);
    f->max_c = malloc(nn * sizeof *f->max_c);
    f->max_m = malloc(nn * sizeof *f->max_m);
    f->max_s = malloc(nn * sizeof *f->max_s);
    f->root = malloc((ntrees > 0 ? (size_t)ntrees : 1) * sizeof *f->root);
    f->ntrees = ntrees;
    if (!f->left || !f->right || !f->max_c || !f->max_m || !f->max_s || !f->root) return -1;
    for (int32_t t = 0; t < ntrees; t++) f->root[t] = -1;
    return 0;
}

static void forest_free(wfm_forest *f) {
    free(f->left);
    free(f->right);
    free(f->max_c);
    free(f->max_m);
    free(f->max_s);
    free(f->root);
}

wfm_alloc *wfm_alloc_new(int32_t n, int32_t nloc, int policy) {
    wfm_alloc *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    size_t nn = n > 0 ? (size_t)n : 1;
    a->n = n;
    a->nloc = nloc;
    a->policy = policy;
    a->loc = malloc(nn * sizeof *a->loc);
    a->cap_c = malloc(nn * sizeof *a->cap_c);
    a->cap_m = malloc(nn * sizeof *a->cap_m);
    a->cap_s = malloc(nn * sizeof *a->cap_s);
    a->free_c = malloc(nn * sizeof *a->free_c);
    a->free_m = malloc(nn * sizeof *a->free_m);
    a->free_s = malloc(nn * sizeof *a->free_s);
    a->key = malloc(nn * sizeof *a->key);
    a->prio = malloc(nn * sizeof *a->prio);
    a->bits = calloc(nn * WFM_CORE_WORDS, sizeof *a->bits);
    a->chosen = malloc(nn * sizeof *a->chosen);
    int bad = forest_init(&a->all, n, 1) | forest_init(&a->byloc, n, nloc);
    if (bad || !a->loc || !a->cap_c || !a->cap_m || !a->cap_s || !a->free_c || !a->free_m ||
        !a->free_s || !a->key || !a->prio || !a->bits || !a->chosen) {
        wfm_alloc_free(a);
        return NULL;
    }
    return a;
}

void wfm_alloc_free(wfm_alloc *a) {
    if (!a) return;
    free(a->loc);
    free(a->cap_c);
    free(a->cap_m);
    free(a->cap_s);
    free(a->free_c);
    free(a->free_m);
    free(a->free_s);
    free(a->key);
    free(a->prio);
    free(a->bits);
    free(a->chosen);
    forest_free(&a->all);
    forest_free(&a->byloc);
    free(a);
}

static uint32_t hash32(uint32_t x) { /* lowbias32: a fixed, well-mixed priority per index */
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

void wfm_alloc_set_node(wfm_alloc *a, int32_t i, int32_t loc, const int32_t *cores,
                        int32_t ncores, int64_t msize, int64_t ssize) {
    uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
    memset(w, 0, WFM_CORE_WORDS * sizeof *w);
    for (int32_t k = 0; k < ncores; k++) w[cores[k] >> 6] |= 1ull << (cores[k] & 63);
    a->loc[i] = loc;
    a->cap_c[i] = a->free_c[i] = ncores;
    a->cap_m[i] = a->free_m[i] = msize;
    a->cap_s[i] = a->free_s[i] = ssize;
    a->prio[i] = hash32((uint32_t)i + 0x9e3779b9U);
    a->all.left[i] = a->all.right[i] = -1;
    a->byloc.left[i] = a->byloc.right[i] = -1;
}

void wfm_alloc_build(wfm_alloc *a) {
    for (int32_t i = 0; i < a->n; i++) link_node(a, i);
}

/* --- operations ----------------------------------------------------------- */

int32_t wfm_reserve(wfm_alloc *a, int32_t servers, int32_t c, int64_t m, int64_t s,
                    int32_t ntiers, const int32_t *tier_start, const int32_t *locs,
                    int32_t *out_nodes, int32_t *out_cores) {
    int32_t found = 0;
    if (servers > a->n) servers = a->n + 1; /* cannot fit; still count what fits */
    if (ntiers == 0) {
        while (found < servers && found < a->n) {
            int32_t x = find_first(&a->all, a, a->all.root[0], c, m, s);
            if (x < 0) break;
            a->chosen[found++] = x;
            unlink_node(a, x);
        }
    } else {
        for (int32_t t = 0; t < ntiers && found < servers; t++) {
            while (found < servers && found < a->n) {
                int32_t best = -1;
                for (int32_t k = tier_start[t]; k < tier_start[t + 1]; k++) {
                    int32_t x = find_first(&a->byloc, a, a->byloc.root[locs[k]], c, m, s);
                    if (x >= 0 && (best < 0 || a->key[x] < a->key[best])) best = x;
                }
                if (best < 0) break;
                a->chosen[found++] = best;
                unlink_node(a, best);
            }
        }
    }
    if (found < servers) {
        for (int32_t k = 0; k < found; k++) link_node(a, a->chosen[k]);
        return found;
    }
    for (int32_t k = 0; k < found; k++) {
        int32_t i = a->chosen[k];
        a->free_c[i] -= c;
        a->free_m[i] -= m;
        a->free_s[i] -= s;
        if (c) take_lowest(a->bits + (size_t)i * WFM_CORE_WORDS, c, out_cores + (size_t)k * c);
        link_node(a, i);
        out_nodes[k] = i;
    }
    return found;
}

void wfm_give_back(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores, int64_t m,
                   int64_t s) {
    unlink_node(a, i);
    uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
    for (int32_t k = 0; k < ncores; k++) w[cores[k] >> 6] |= 1ull << (cores[k] & 63);
    a->free_c[i] += ncores;
    a->free_m[i] += m;
    a->free_s[i] += s;
    link_node(a, i);
}

int wfm_can_take_exact(const wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores,
                       int64_t m, int64_t s) {
    const uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
    for (int32_t k = 0; k < ncores; k++)
        if (!(w[cores[k] >> 6] & (1ull << (cores[k] & 63)))) return 0;
    return a->free_m[i] >= m && a->free_s[i] >= s;
}

void wfm_take_exact(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores, int64_t m,
                    int64_t s) {
    unlink_node(a, i);
    uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
    for (int32_t k = 0; k < ncores; k++) w[cores[k] >> 6] &= ~(1ull << (cores[k] & 63));
    a->free_c[i] -= ncores;
    a->free_m[i] -= m;
    a->free_s[i] -= s;
    link_node(a, i);
}

int32_t wfm_free_cores(const wfm_alloc *a, int32_t i, int32_t *out) {
    const uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
    int32_t n = 0;
    for (int j = 0; j < WFM_CORE_WORDS; j++)
        for (uint64_t x = w[j]; x; x &= x - 1) out[n++] = j * 64 + __builtin_ctzll(x);
    return n;
}

/* --- self check (tests) ---------------------------------------------------- */

/* Returns the size of the subtree, or -1 on a broken invariant. */
static int32_t check_tree(const wfm_forest *f, const wfm_alloc *a, int32_t r, uint64_t lo,
                          uint64_t hi) {
    if (r < 0) return 0;
    if (a->key[r] < lo || a->key[r] > hi) return -1;
    if (a->key[r] != order_key(a, r)) return -1;
    int32_t l = f->left[r], q = f->right[r];
    if ((l >= 0 && a->prio[l] > a->prio[r]) || (q >= 0 && a->prio[q] > a->prio[r])) return -1;
    int32_t nl = check_tree(f, a, l, lo, a->key[r] - 1);
    int32_t nr = check_tree(f, a, q, a->key[r] + 1, hi);
    if (nl < 0 || nr < 0) return -1;
    int32_t mc = a->free_c[r];
    int64_t mm = a->free_m[r], ms = a->free_s[r];
    if (l >= 0) {
        mc = f->max_c[l] > mc ? f->max_c[l] : mc;
        mm = f->max_m[l] > mm ? f->max_m[l] : mm;
        ms = f->max_s[l] > ms ? f->max_s[l] : ms;
    }
    if (q >= 0) {
        mc = f->max_c[q] > mc ? f->max_c[q] : mc;
        mm = f->max_m[q] > mm ? f->max_m[q] : mm;
        ms = f->max_s[q] > ms ? f->max_s[q] : ms;
    }
    if (mc != f->max_c[r] || mm != f->max_m[r] || ms != f->max_s[r]) return -1;
    return nl + nr + 1;
}

int wfm_check(const wfm_alloc *a) {
    int32_t inloc = 0;
    for (int32_t i = 0; i < a->n; i++) {
        const uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
        int32_t pc = 0;
        for (int j = 0; j < WFM_CORE_WORDS; j++) pc += __builtin_popcountll(w[j]);
        if (pc != a->free_c[i]) return 1;
        if (a->free_c[i] < 0 || a->free_m[i] < 0 || a->free_s[i] < 0) return 2;
        if (a->free_c[i] > a->cap_c[i] || a->free_m[i] > a->cap_m[i] || a->free_s[i] > a->cap_s[i])
            return 3;
        if (a->loc[i] >= 0) inloc++;
    }
    if (check_tree(&a->all, a, a->all.root[0], 0, UINT64_MAX) != a->n) return 4;
    int32_t total = 0;
    for (int32_t t = 0; t < a->nloc; t++) {
        int32_t k = check_tree(&a->byloc, a, a->byloc.root[t], 0, UINT64_MAX);
        if (k < 0) return 5;
        total += k;
    }
    if (total != inloc) return 6;
    return 0;
}
