/* The compiled allocator's core; see wfm_alloc.h for the data structures
 * and reference.py for the rules. */
#include "wfm_alloc.h"

#include <stdlib.h>
#include <string.h>

/* --- order key ----------------------------------------------------------- */

static inline uint64_t fill_level(int64_t free, int64_t cap) {
    if (cap == 0) return WFM_LEVELS;
    if ((uint64_t)free < (1ull << 53)) return ((uint64_t)free * WFM_LEVELS) / (uint64_t)cap;
    return (uint64_t)(((unsigned __int128)(uint64_t)free * WFM_LEVELS) / (uint64_t)cap);
}

/* (tightest dimension's fill level, then the sum of the three): see
 * reference.order_level. */
static inline uint64_t order_key(const wfm_alloc *a, int32_t i) {
    const wfm_node *d = &a->node[i];
    uint64_t fc = fill_level(d->free_c, a->cap_c[i]);
    uint64_t fm = fill_level(d->free_m, a->cap_m[i]);
    uint64_t fs = fill_level(d->free_s, a->cap_s[i]);
    uint64_t tight = fc < fm ? fc : fm;
    if (fs < tight) tight = fs;
    uint64_t free = tight * WFM_TIGHT_WEIGHT + fc + fm + fs;
    uint64_t level = a->policy == WFM_POLICY_PACK ? free : WFM_MAX_LEVEL - free;
    return (level << 32) | (uint32_t)i;
}

static inline int fits(const wfm_alloc *a, int32_t i, int32_t c, int64_t m, int64_t s) {
    return a->node[i].free_c >= c && a->node[i].free_m >= m && a->node[i].free_s >= s;
}

/* --- treap over a forest -------------------------------------------------- */

static inline void pull(wfm_forest *f, const wfm_alloc *a, int32_t v) {
    int32_t mc = a->node[v].free_c;
    int64_t mm = a->node[v].free_m, ms = a->node[v].free_s;
    int32_t l = f->v[v].left, r = f->v[v].right;
    if (l >= 0) {
        if (f->v[l].max_c > mc) mc = f->v[l].max_c;
        if (f->v[l].max_m > mm) mm = f->v[l].max_m;
        if (f->v[l].max_s > ms) ms = f->v[l].max_s;
    }
    if (r >= 0) {
        if (f->v[r].max_c > mc) mc = f->v[r].max_c;
        if (f->v[r].max_m > mm) mm = f->v[r].max_m;
        if (f->v[r].max_s > ms) ms = f->v[r].max_s;
    }
    f->v[v].max_c = mc;
    f->v[v].max_m = mm;
    f->v[v].max_s = ms;
}

/* Split tree r into keys < k (*lo) and keys >= k (*hi). */
static void split(wfm_forest *f, const wfm_alloc *a, int32_t r, uint64_t k, int32_t *lo,
                  int32_t *hi) {
    if (r < 0) {
        *lo = *hi = -1;
        return;
    }
    if (a->node[r].key < k) {
        split(f, a, f->v[r].right, k, &f->v[r].right, hi);
        *lo = r;
    } else {
        split(f, a, f->v[r].left, k, lo, &f->v[r].left);
        *hi = r;
    }
    pull(f, a, r);
}

static int32_t merge(wfm_forest *f, const wfm_alloc *a, int32_t l, int32_t r) {
    if (l < 0) return r;
    if (r < 0) return l;
    if (a->node[l].prio > a->node[r].prio) {
        f->v[l].right = merge(f, a, f->v[l].right, r);
        pull(f, a, l);
        return l;
    }
    f->v[r].left = merge(f, a, l, f->v[r].left);
    pull(f, a, r);
    return r;
}

static int32_t tinsert(wfm_forest *f, const wfm_alloc *a, int32_t r, int32_t x) {
    if (r < 0 || a->node[x].prio > a->node[r].prio) {
        split(f, a, r, a->node[x].key, &f->v[x].left, &f->v[x].right);
        pull(f, a, x);
        return x;
    }
    if (a->node[x].key < a->node[r].key)
        f->v[r].left = tinsert(f, a, f->v[r].left, x);
    else
        f->v[r].right = tinsert(f, a, f->v[r].right, x);
    pull(f, a, r);
    return r;
}

/* Remove x (present, with its current key) from tree r. */
static int32_t tdelete(wfm_forest *f, const wfm_alloc *a, int32_t r, int32_t x) {
    if (r == x) return merge(f, a, f->v[x].left, f->v[x].right);
    if (a->node[x].key < a->node[r].key)
        f->v[r].left = tdelete(f, a, f->v[r].left, x);
    else
        f->v[r].right = tdelete(f, a, f->v[r].right, x);
    pull(f, a, r);
    return r;
}

/* The first datanode in key order under r that fits (c, m, s), or -1. */
static int32_t find_first(const wfm_forest *f, const wfm_alloc *a, int32_t r, int32_t c,
                          int64_t m, int64_t s) {
    while (r >= 0) {
        if (f->v[r].max_c < c || f->v[r].max_m < m || f->v[r].max_s < s) return -1;
        int32_t found = find_first(f, a, f->v[r].left, c, m, s);
        if (found >= 0) return found;
        if (fits(a, r, c, m, s)) return r;
        r = f->v[r].right; /* tail position: iterate */
    }
    return -1;
}

static void unlink_node(wfm_alloc *a, int32_t i) {
    a->all.root[0] = tdelete(&a->all, a, a->all.root[0], i);
    int32_t l = a->loc[i];
    if (l >= 0) a->byloc.root[l] = tdelete(&a->byloc, a, a->byloc.root[l], i);
}

static void link_node(wfm_alloc *a, int32_t i) {
    a->node[i].key = order_key(a, i);
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
    f->v = malloc(nn * sizeof *f->v);
    f->root = malloc((ntrees > 0 ? (size_t)ntrees : 1) * sizeof *f->root);
    f->ntrees = ntrees;
    if (!f->v || !f->root) return -1;
    for (int32_t t = 0; t < ntrees; t++) f->root[t] = -1;
    return 0;
}

static void forest_free(wfm_forest *f) {
    free(f->v);
    free(f->root);
}

wfm_alloc *wfm_alloc_new(int32_t n, int32_t nloc, int policy) {
    wfm_alloc *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->all.root = a->byloc.root = NULL;
    size_t nn = n > 0 ? (size_t)n : 1;
    a->n = n;
    a->nloc = nloc;
    a->policy = policy;
    a->loc = malloc(nn * sizeof *a->loc);
    a->cap_c = malloc(nn * sizeof *a->cap_c);
    a->cap_m = malloc(nn * sizeof *a->cap_m);
    a->cap_s = malloc(nn * sizeof *a->cap_s);
    a->node = malloc(nn * sizeof *a->node);
    a->bits = calloc(nn * WFM_CORE_WORDS, sizeof *a->bits);
    a->chosen = malloc(nn * sizeof *a->chosen);
    int bad = forest_init(&a->all, n, 1) | forest_init(&a->byloc, n, nloc);
    if (bad || !a->loc || !a->cap_c || !a->cap_m || !a->cap_s || !a->node || !a->bits || !a->chosen) {
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
    free(a->node);
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
    a->cap_c[i] = a->node[i].free_c = ncores;
    a->cap_m[i] = a->node[i].free_m = msize;
    a->cap_s[i] = a->node[i].free_s = ssize;
    a->node[i].prio = hash32((uint32_t)i + 0x9e3779b9U);
    a->all.v[i].left = a->all.v[i].right = -1;
    a->byloc.v[i].left = a->byloc.v[i].right = -1;
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
                    if (x >= 0 && (best < 0 || a->node[x].key < a->node[best].key)) best = x;
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
        a->node[i].free_c -= c;
        a->node[i].free_m -= m;
        a->node[i].free_s -= s;
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
    a->node[i].free_c += ncores;
    a->node[i].free_m += m;
    a->node[i].free_s += s;
    link_node(a, i);
}

int wfm_can_take_exact(const wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores,
                       int64_t m, int64_t s) {
    const uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
    for (int32_t k = 0; k < ncores; k++)
        if (!(w[cores[k] >> 6] & (1ull << (cores[k] & 63)))) return 0;
    return a->node[i].free_m >= m && a->node[i].free_s >= s;
}

void wfm_take_exact(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores, int64_t m,
                    int64_t s) {
    unlink_node(a, i);
    uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
    for (int32_t k = 0; k < ncores; k++) w[cores[k] >> 6] &= ~(1ull << (cores[k] & 63));
    a->node[i].free_c -= ncores;
    a->node[i].free_m -= m;
    a->node[i].free_s -= s;
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
    if (a->node[r].key < lo || a->node[r].key > hi) return -1;
    if (a->node[r].key != order_key(a, r)) return -1;
    int32_t l = f->v[r].left, q = f->v[r].right;
    if ((l >= 0 && a->node[l].prio > a->node[r].prio) || (q >= 0 && a->node[q].prio > a->node[r].prio)) return -1;
    int32_t nl = check_tree(f, a, l, lo, a->node[r].key - 1);
    int32_t nr = check_tree(f, a, q, a->node[r].key + 1, hi);
    if (nl < 0 || nr < 0) return -1;
    int32_t mc = a->node[r].free_c;
    int64_t mm = a->node[r].free_m, ms = a->node[r].free_s;
    if (l >= 0) {
        mc = f->v[l].max_c > mc ? f->v[l].max_c : mc;
        mm = f->v[l].max_m > mm ? f->v[l].max_m : mm;
        ms = f->v[l].max_s > ms ? f->v[l].max_s : ms;
    }
    if (q >= 0) {
        mc = f->v[q].max_c > mc ? f->v[q].max_c : mc;
        mm = f->v[q].max_m > mm ? f->v[q].max_m : mm;
        ms = f->v[q].max_s > ms ? f->v[q].max_s : ms;
    }
    if (mc != f->v[r].max_c || mm != f->v[r].max_m || ms != f->v[r].max_s) return -1;
    return nl + nr + 1;
}

int wfm_check(const wfm_alloc *a) {
    int32_t inloc = 0;
    for (int32_t i = 0; i < a->n; i++) {
        const uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
        int32_t pc = 0;
        for (int j = 0; j < WFM_CORE_WORDS; j++) pc += __builtin_popcountll(w[j]);
        if (pc != a->node[i].free_c) return 1;
        if (a->node[i].free_c < 0 || a->node[i].free_m < 0 || a->node[i].free_s < 0) return 2;
        if (a->node[i].free_c > a->cap_c[i] || a->node[i].free_m > a->cap_m[i] || a->node[i].free_s > a->cap_s[i])
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
