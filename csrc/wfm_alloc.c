/* The compiled allocator's core; see wfm_alloc.h for the data structures
 * and reference.py for the rules. */
#include "wfm_alloc.h"

#include <stdlib.h>
#include <string.h>

#define HALF (a->bsize / 2)

/* --- order key ----------------------------------------------------------- */

/* free * WFM_LEVELS // cap, exactly: a floating-point estimate (inv =
 * WFM_LEVELS / cap) corrected with integer products, instead of a division. */
static inline uint64_t fill_level(int64_t free, int64_t cap, double inv, uint64_t magic) {
    /* magic = ceil(2**64 / cap) for 2 <= cap < 2**27 (see magic_of): one
     * multiply, exact. */
    if (magic) return (uint64_t)(((unsigned __int128)((uint64_t)free * WFM_LEVELS) * magic) >> 64);
    if (cap == 0) return WFM_LEVELS;
    if ((uint64_t)free >= (1ull << 53))
        return (uint64_t)(((unsigned __int128)(uint64_t)free * WFM_LEVELS) / (uint64_t)cap);
    uint64_t num = (uint64_t)free * WFM_LEVELS, d = (uint64_t)cap;
    uint64_t q = (uint64_t)((double)free * inv);
    if (q > WFM_LEVELS) q = WFM_LEVELS;
    while (q > 0 && q * d > num) q--;
    while (q < WFM_LEVELS && (q + 1) * d <= num) q++;
    return q;
}

/* (tightest dimension's fill level, then the sum of the three): see
 * reference.order_level. */
static inline uint64_t order_key(const wfm_alloc *a, int32_t i) {
    const wfm_node *d = &a->node[i];
    const double *inv = a->inv + 3 * (size_t)i;
    const uint64_t *magic = a->magic + 3 * (size_t)i;
    uint64_t fc = fill_level(d->free_c, a->cap_c[i], inv[0], magic[0]);
    uint64_t fm = fill_level(d->free_m, a->cap_m[i], inv[1], magic[1]);
    uint64_t fs = fill_level(d->free_s, a->cap_s[i], inv[2], magic[2]);
    uint64_t tight = fc < fm ? fc : fm;
    if (fs < tight) tight = fs;
    uint64_t free = tight * WFM_TIGHT_WEIGHT + fc + fm + fs;
    uint64_t level = a->policy == WFM_POLICY_PACK ? free : WFM_MAX_LEVEL - free;
    return (level << 32) | (uint32_t)i;
}

/* ceil(2**64 / cap) when it gives free * WFM_LEVELS // cap exactly for
 * every 0 <= free <= cap, else 0 (fill_level then takes the general path).
 * With magic = 2**64 / cap + e (0 <= e < 1) and num = free * WFM_LEVELS =
 * q * cap + r: num * magic / 2**64 = q + r / cap + num * e / 2**64, below
 * q + 1 when num < 2**64 / cap, which num <= WFM_LEVELS * cap (2**10 * cap)
 * ensures for cap < 2**27. cap = 1 would need 2**64. */
static uint64_t magic_of(int64_t cap) {
    if (cap < 2 || cap >= (1ll << 27)) return 0;
    return UINT64_MAX / (uint64_t)cap + 1;
}

static inline wfm_entry entry_of(const wfm_alloc *a, int32_t i) {
    wfm_entry e;
    e.key = a->node[i].key;
    e.c = a->node[i].free_c;
    e.m = a->node[i].free_m;
    e.s = a->node[i].free_s;
    e.pad = 0;
    return e;
}

/* --- lists of blocks over key ranges --------------------------------------- */

static const wfm_max NO_MAX = {-1, -1, -1, 0};

static inline wfm_block *block(const wfm_alloc *a, const wfm_list *l, int32_t b) {
    return &a->pool[l->blk[b]];
}

static inline wfm_entry block_get(const wfm_block *bk, int32_t k) {
    wfm_entry x;
    x.key = bk->key[k];
    x.c = bk->c[k];
    x.m = bk->m[k];
    x.s = bk->s[k];
    x.pad = 0;
    return x;
}

static inline void block_set(wfm_block *bk, int32_t k, const wfm_entry *x) {
    bk->key[k] = x->key;
    bk->c[k] = x->c;
    bk->m[k] = x->m;
    bk->s[k] = x->s;
}

static inline int can_hold(const wfm_max *x, int32_t c, int64_t m, int64_t s) {
    /* & rather than &&: one well-predicted branch for the caller instead of
     * three unpredictable ones. */
    return (x->c >= c) & (x->m >= m) & (x->s >= s);
}

static inline void max_with(wfm_max *x, int32_t c, int64_t m, int64_t s) {
    x->c = c > x->c ? c : x->c;
    x->m = m > x->m ? m : x->m;
    x->s = s > x->s ? s : x->s;
}

/* The block whose key range holds key: the last b >= 1 with first[b] <= key,
 * else 0. */
static inline int32_t list_locate(const wfm_list *l, uint64_t key) {
    const uint64_t *base = l->first + 1;
    int32_t n = l->nb - 1;
    while (n > 1) {
        int32_t half = n >> 1;
        base = base[half - 1] <= key ? base + half : base;
        n -= half;
    }
    return (int32_t)(base - l->first) - 1 + (n == 1 && *base <= key);
}

/* Write entry x at index k of block id and record where it is. */
static inline void put(wfm_alloc *a, const wfm_list *l, int32_t id, int32_t k, const wfm_entry *x) {
    block_set(&a->pool[id], k, x);
    wfm_slot *sl = &a->slot[l->which][(uint32_t)x->key];
    sl->blk = id;
    sl->idx = k;
}

/* Recompute the maxima of group g from its blocks. */
static void group_remax(wfm_list *l, int32_t g) {
    wfm_max x = NO_MAX;
    int32_t end = (g + 1) * WFM_GROUP < l->nb ? (g + 1) * WFM_GROUP : l->nb;
    for (int32_t b = g * WFM_GROUP; b < end; b++) max_with(&x, l->bmax[b].c, l->bmax[b].m, l->bmax[b].s);
    l->gmax[g] = x;
}

/* Every group from the one of block b on (after blocks moved between groups). */
static void groups_remax_from(wfm_list *l, int32_t b) {
    for (int32_t g = b / WFM_GROUP; g * WFM_GROUP < l->nb; g++) group_remax(l, g);
}

/* Recompute the maxima of block b from its entries, then of its group. */
static void block_remax(wfm_list *l, int32_t b, const wfm_block *bk) {
    wfm_max x = NO_MAX, old = l->bmax[b];
    for (int32_t k = 0; k < bk->n; k++) max_with(&x, bk->c[k], bk->m[k], bk->s[k]);
    l->bmax[b] = x;
    wfm_max *g = &l->gmax[b / WFM_GROUP];
    if ((x.c < old.c && old.c == g->c) || (x.m < old.m && old.m == g->m) ||
        (x.s < old.s && old.s == g->s))
        group_remax(l, b / WFM_GROUP); /* the group's maximum went down */
    else
        max_with(g, x.c, x.m, x.s);
}

/* Block b gained entry x (nothing else changed). */
static inline void block_add_max(wfm_list *l, int32_t b, const wfm_entry *x) {
    max_with(&l->bmax[b], x->c, x->m, x->s);
    max_with(&l->gmax[b / WFM_GROUP], x->c, x->m, x->s);
}

static void renumber_from(wfm_alloc *a, wfm_list *l, int32_t b) {
    for (; b < l->nb; b++) a->pool[l->blk[b]].pos = b;
}

/* Open slot b in the block arrays (shifting b.. right) for block id id. */
static void list_open(wfm_alloc *a, wfm_list *l, int32_t b, int32_t id) {
    int32_t k = l->nb - b;
    memmove(&l->blk[b + 1], &l->blk[b], (size_t)k * sizeof *l->blk);
    memmove(&l->first[b + 1], &l->first[b], (size_t)k * sizeof *l->first);
    memmove(&l->bmax[b + 1], &l->bmax[b], (size_t)k * sizeof *l->bmax);
    l->blk[b] = id;
    l->nb++;
    renumber_from(a, l, b);
}

/* Close slot b of the block arrays and give its block back to the pool. */
static void list_close(wfm_alloc *a, wfm_list *l, int32_t b) {
    a->free_blk[a->nfree++] = l->blk[b];
    int32_t k = l->nb - b - 1;
    memmove(&l->blk[b], &l->blk[b + 1], (size_t)k * sizeof *l->blk);
    memmove(&l->first[b], &l->first[b + 1], (size_t)k * sizeof *l->first);
    memmove(&l->bmax[b], &l->bmax[b + 1], (size_t)k * sizeof *l->bmax);
    l->nb--;
    renumber_from(a, l, b);
}

/* Split the full block b at its median key into blocks b and b + 1. */
static void list_split(wfm_alloc *a, wfm_list *l, int32_t b) {
    wfm_entry tmp[WFM_BLOCK];
    int32_t lo_id = l->blk[b], hi_id = a->free_blk[--a->nfree];
    wfm_block *lo = &a->pool[lo_id], *hi = &a->pool[hi_id];
    int32_t n = lo->n;
    for (int32_t k = 0; k < n; k++) { /* insertion sort by key (rare: on a split) */
        wfm_entry x = block_get(lo, k);
        int32_t j = k;
        while (j > 0 && tmp[j - 1].key > x.key) {
            tmp[j] = tmp[j - 1];
            j--;
        }
        tmp[j] = x;
    }
    for (int32_t k = 0; k < HALF; k++) put(a, l, lo_id, k, &tmp[k]);
    for (int32_t k = HALF; k < n; k++) put(a, l, hi_id, k - HALF, &tmp[k]);
    lo->n = HALF;
    hi->n = n - HALF;
    list_open(a, l, b + 1, hi_id);
    l->first[b + 1] = tmp[HALF].key;
    block_remax(l, b, lo);
    block_remax(l, b + 1, hi);
    groups_remax_from(l, b);
}

/* Append block b + 1 to block b (they fit in one); b's range grows. */
static void list_merge(wfm_alloc *a, wfm_list *l, int32_t b) {
    int32_t lo_id = l->blk[b];
    wfm_block *lo = &a->pool[lo_id], *hi = block(a, l, b + 1);
    for (int32_t k = 0; k < hi->n; k++) {
        wfm_entry x = block_get(hi, k);
        put(a, l, lo_id, lo->n + k, &x);
    }
    lo->n += hi->n;
    max_with(&l->bmax[b], l->bmax[b + 1].c, l->bmax[b + 1].m, l->bmax[b + 1].s);
    list_close(a, l, b + 1);
    groups_remax_from(l, b);
}

static void list_insert(wfm_alloc *a, wfm_list *l, const wfm_entry *x) {
    int32_t b = list_locate(l, x->key);
    if (block(a, l, b)->n == a->bsize) {
        list_split(a, l, b);
        if (x->key >= l->first[b + 1]) b++;
    }
    wfm_block *bk = block(a, l, b);
    put(a, l, l->blk[b], bk->n++, x);
    block_add_max(l, b, x);
}

/* Remove the entry at index k of block id (the last entry takes its place). */
static void list_delete(wfm_alloc *a, wfm_list *l, int32_t id, int32_t k) {
    wfm_block *bk = &a->pool[id];
    int32_t b = bk->pos;
    wfm_entry x = block_get(bk, k);
    if (k != --bk->n) {
        wfm_entry last = block_get(bk, bk->n);
        put(a, l, id, k, &last);
    }
    if (bk->n == 0) {
        if (l->nb > 1) {
            list_close(a, l, b); /* its key range joins the block before (or after, for b = 0) */
            groups_remax_from(l, b);
        } else {
            l->bmax[0] = l->gmax[0] = NO_MAX;
        }
        return;
    }
    const wfm_max *bm = &l->bmax[b];
    if (x.c == bm->c || x.m == bm->m || x.s == bm->s) block_remax(l, b, bk);
    /* Keep any two neighbouring blocks above HALF entries together. */
    for (;;) {
        if (b + 1 < l->nb && bk->n + block(a, l, b + 1)->n <= HALF) {
            list_merge(a, l, b);
        } else if (b > 0 && block(a, l, b - 1)->n + bk->n <= HALF) {
            list_merge(a, l, --b);
            bk = block(a, l, b);
        } else {
            break;
        }
    }
}

/* Datanode (uint32_t)x->key has a new key and free capacity: update its entry. */
static void list_move(wfm_alloc *a, wfm_list *l, const wfm_entry *x) {
    wfm_slot sl = a->slot[l->which][(uint32_t)x->key];
    wfm_block *bk = &a->pool[sl.blk];
    int32_t b = bk->pos;
    uint64_t k = x->key;
    if ((b > 0 && k < l->first[b]) || (b + 1 < l->nb && k >= l->first[b + 1])) {
        list_delete(a, l, sl.blk, sl.idx);
        list_insert(a, l, x);
        return;
    }
    /* Still in the key range of its block: change it in place. */
    wfm_entry old = block_get(bk, sl.idx);
    block_set(bk, sl.idx, x);
    const wfm_max *bm = &l->bmax[b];
    if ((x->c < old.c && old.c == bm->c) || (x->m < old.m && old.m == bm->m) ||
        (x->s < old.s && old.s == bm->s))
        block_remax(l, b, bk);
    else
        block_add_max(l, b, x);
}

/* The smallest key >= lo of an entry of bk that fits (c, m, s), or UINT64_MAX. */
static uint64_t block_min_fit_plain(const wfm_block *bk, uint64_t lo, int32_t c, int64_t m,
                                    int64_t s) {
    uint64_t best = UINT64_MAX;
    for (int32_t k = 0; k < bk->n; k++) {
        uint64_t key = bk->key[k];
        /* & rather than &&: no branch to mispredict per entry */
        int ok = (bk->c[k] >= c) & (bk->m[k] >= m) & (bk->s[k] >= s) & (key >= lo) & (key < best);
        best = ok ? key : best;
    }
    return best;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(WFM_NO_AVX2)
#include <immintrin.h>
/* The same with AVX2, 4 entries per step (keys and sizes are below 2**63, so
 * signed compares are exact; lanes past n are masked off). */
__attribute__((target("avx2"))) static uint64_t block_min_fit_avx2(const wfm_block *bk,
                                                                   uint64_t lo, int32_t c,
                                                                   int64_t m, int64_t s) {
    const __m256i vm = _mm256_set1_epi64x(m - 1), vs = _mm256_set1_epi64x(s - 1);
    const __m256i vlo = _mm256_set1_epi64x((int64_t)lo - 1);
    const __m128i vc = _mm_set1_epi32(c - 1);
    const int32_t n = bk->n;
    /* Fit masks of 4 entries; a first pass (no dependency between steps)
     * settles most blocks, which hold no fit although their maxima pass. */
#define WFM_FITS(k)                                                                            \
    _mm256_and_si256(                                                                          \
        _mm256_and_si256(                                                                      \
            _mm256_cmpgt_epi64(_mm256_loadu_si256((const __m256i *)&bk->m[k]), vm),            \
            _mm256_cmpgt_epi64(_mm256_loadu_si256((const __m256i *)&bk->s[k]), vs)),           \
        _mm256_and_si256(                                                                      \
            _mm256_cvtepi32_epi64(                                                             \
                _mm_cmpgt_epi32(_mm_loadu_si128((const __m128i *)&bk->c[k]), vc)),             \
            _mm256_cmpgt_epi64(_mm256_loadu_si256((const __m256i *)&bk->key[k]), vlo)))
    const __m256i lane = _mm256_set_epi64x(3, 2, 1, 0);
    const __m256i tail = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n & 3 ? n & 3 : 4), lane);
    __m256i any = _mm256_setzero_si256();
    int32_t k = 0;
    for (; k + 4 < n; k += 4) any = _mm256_or_si256(any, WFM_FITS(k));
    if (n > 0) any = _mm256_or_si256(any, _mm256_and_si256(WFM_FITS(k), tail));
    if (_mm256_testz_si256(any, any)) return UINT64_MAX;
    __m256i best = _mm256_set1_epi64x(INT64_MAX);
    for (k = 0; k < n; k += 4) {
        __m256i key = _mm256_loadu_si256((const __m256i *)&bk->key[k]);
        __m256i ok = WFM_FITS(k);
        if (k + 4 >= n) ok = _mm256_and_si256(ok, tail);
        ok = _mm256_and_si256(ok, _mm256_cmpgt_epi64(best, key));
        best = _mm256_blendv_epi8(best, key, ok);
    }
#undef WFM_FITS
    int64_t v[4];
    _mm256_storeu_si256((__m256i *)v, best);
    int64_t r = v[0];
    for (int j = 1; j < 4; j++) r = v[j] < r ? v[j] : r;
    return r == INT64_MAX ? UINT64_MAX : (uint64_t)r;
}

static int use_avx2 = -1;

static inline uint64_t block_min_fit(const wfm_block *bk, uint64_t lo, int32_t c, int64_t m,
                                     int64_t s) {
    if (use_avx2 < 0) use_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    return use_avx2 ? block_min_fit_avx2(bk, lo, c, m, s) : block_min_fit_plain(bk, lo, c, m, s);
}

int wfm_use_avx2(int want) {
    use_avx2 = want && __builtin_cpu_supports("avx2");
    return use_avx2;
}
#else
#define block_min_fit block_min_fit_plain
int wfm_use_avx2(int want) {
    (void)want;
    return 0;
}
#endif

/* The smallest key >= lo of an entry that fits (c, m, s), searching from
 * block *pb on; leaves *pb on its block. UINT64_MAX if there is none. */
static inline uint64_t list_next_fit(const wfm_alloc *a, const wfm_list *l, int32_t *pb,
                                     uint64_t lo, int32_t c, int64_t m, int64_t s) {
    int32_t b = *pb, nb = l->nb;
    while (b < nb) {
        if ((b % WFM_GROUP) == 0 && !can_hold(&l->gmax[b / WFM_GROUP], c, m, s)) {
            b += WFM_GROUP;
            continue;
        }
        if (can_hold(&l->bmax[b], c, m, s)) {
            /* Blocks are key ranges: the first block with a fit holds the
             * answer, the smallest fitting key in it. */
            uint64_t best = block_min_fit(block(a, l, b), lo, c, m, s);
            if (best != UINT64_MAX) {
                *pb = b;
                return best;
            }
        }
        b++;
    }
    *pb = nb;
    return UINT64_MAX;
}

/* Datanode i's free capacity changed: recompute its key and move it in its lists. */
static void node_changed(wfm_alloc *a, int32_t i) {
    a->version[i]++;
    a->node[i].key = order_key(a, i);
    wfm_entry x = entry_of(a, i);
    list_move(a, &a->list[0], &x);
    if (a->node[i].loc >= 0) list_move(a, &a->list[1 + a->node[i].loc], &x);
}

/* --- core bitsets --------------------------------------------------------- */

/* Clear the c lowest set bits of w, listing their core ids ascending. */
static void take_lowest(uint64_t *w, int32_t c, int32_t *out) {
    for (int j = 0; c > 0 && j < WFM_CORE_WORDS; j++) {
        uint64_t x = w[j];
        for (; c > 0 && x; c--, x &= x - 1) *out++ = j * 64 + __builtin_ctzll(x);
        w[j] = x;
    }
}

/* --- life cycle ----------------------------------------------------------- */

wfm_alloc *wfm_alloc_new(int32_t n, int32_t nloc, int policy) {
    wfm_alloc *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    size_t nn = n > 0 ? (size_t)n : 1;
    a->n = n;
    a->nloc = nloc;
    a->policy = policy;
    a->bsize = WFM_BLOCK;
    a->cap_c = malloc(nn * sizeof *a->cap_c);
    a->cap_m = malloc(nn * sizeof *a->cap_m);
    a->cap_s = malloc(nn * sizeof *a->cap_s);
    a->node = malloc(nn * sizeof *a->node);
    a->inv = malloc(3 * nn * sizeof *a->inv);
    a->magic = malloc(3 * nn * sizeof *a->magic);
    a->bits = calloc(nn * WFM_CORE_WORDS, sizeof *a->bits);
    a->version = calloc(nn, sizeof *a->version);
    a->chosen = malloc(nn * sizeof *a->chosen);
    a->list = calloc((size_t)nloc + 1, sizeof *a->list);
    a->cur_b = malloc(((size_t)nloc + 1) * sizeof *a->cur_b);
    a->cur_lo = malloc(((size_t)nloc + 1) * sizeof *a->cur_lo);
    a->cur_x = malloc(((size_t)nloc + 1) * sizeof *a->cur_x);
    a->slot[0] = malloc(nn * sizeof *a->slot[0]);
    a->slot[1] = malloc(nn * sizeof *a->slot[1]);
    if (!a->cap_c || !a->cap_m || !a->cap_s || !a->node || !a->inv || !a->magic || !a->bits || !a->version || !a->chosen || !a->list ||
        !a->cur_b || !a->cur_lo || !a->cur_x || !a->slot[0] || !a->slot[1]) {
        wfm_alloc_free(a);
        return NULL;
    }
    return a;
}

void wfm_alloc_free(wfm_alloc *a) {
    if (!a) return;
    free(a->cap_c);
    free(a->cap_m);
    free(a->cap_s);
    free(a->node);
    free(a->inv);
    free(a->magic);
    free(a->bits);
    free(a->version);
    free(a->chosen);
    free(a->cur_b);
    free(a->cur_lo);
    free(a->cur_x);
    free(a->slot[0]);
    free(a->slot[1]);
    if (a->list) {
        for (int32_t t = 0; t <= a->nloc; t++) {
            wfm_list *l = &a->list[t];
            free(l->blk);
            free(l->first);
            free(l->bmax);
            free(l->gmax);
        }
        free(a->list);
    }
    free(a->pool);
    free(a->free_blk);
    free(a);
}

void wfm_alloc_set_node(wfm_alloc *a, int32_t i, int32_t loc, const int32_t *cores,
                        int32_t ncores, int64_t msize, int64_t ssize) {
    uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
    memset(w, 0, WFM_CORE_WORDS * sizeof *w);
    for (int32_t k = 0; k < ncores; k++) w[cores[k] >> 6] |= 1ull << (cores[k] & 63);
    a->node[i].loc = loc;
    a->cap_c[i] = a->node[i].free_c = ncores;
    a->cap_m[i] = a->node[i].free_m = msize;
    a->cap_s[i] = a->node[i].free_s = ssize;
    a->inv[3 * (size_t)i] = ncores ? (double)WFM_LEVELS / ncores : 0;
    a->inv[3 * (size_t)i + 1] = msize ? (double)WFM_LEVELS / msize : 0;
    a->inv[3 * (size_t)i + 2] = ssize ? (double)WFM_LEVELS / ssize : 0;
    a->magic[3 * (size_t)i] = magic_of(ncores);
    a->magic[3 * (size_t)i + 1] = magic_of(msize);
    a->magic[3 * (size_t)i + 2] = magic_of(ssize);
}

int wfm_alloc_build(wfm_alloc *a) {
    /* Members per list, then arrays sized for the most blocks a list can need. */
    int32_t nlists = a->nloc + 1;
    int64_t total = 0;
    int32_t *members = calloc((size_t)nlists, sizeof *members);
    if (!members) return -1;
    members[0] = a->n;
    for (int32_t i = 0; i < a->n; i++)
        if (a->node[i].loc >= 0) members[1 + a->node[i].loc]++;
    for (int32_t t = 0; t < nlists; t++) {
        wfm_list *l = &a->list[t];
        l->cap = (int32_t)(4 * (int64_t)members[t] / a->bsize + 3);
        total += l->cap;
        l->blk = malloc((size_t)l->cap * sizeof *l->blk);
        l->first = malloc((size_t)l->cap * sizeof *l->first);
        l->bmax = malloc((size_t)l->cap * sizeof *l->bmax);
        l->gmax = malloc((size_t)(l->cap / WFM_GROUP + 1) * sizeof *l->gmax);
        if (!l->blk || !l->first || !l->bmax || !l->gmax) {
            free(members);
            return -1;
        }
    }
    free(members);
    a->pool = malloc((size_t)total * sizeof *a->pool);
    a->free_blk = malloc((size_t)total * sizeof *a->free_blk);
    if (!a->pool || !a->free_blk) return -1;
    a->nfree = 0;
    for (int64_t k = total - 1; k >= 0; k--) a->free_blk[a->nfree++] = (int32_t)k;
    for (int32_t t = 0; t < nlists; t++) {
        wfm_list *l = &a->list[t];
        l->nb = 1;
        l->which = t > 0;
        l->blk[0] = a->free_blk[--a->nfree];
        a->pool[l->blk[0]].n = 0;
        a->pool[l->blk[0]].pos = 0;
        l->first[0] = 0;
        l->bmax[0] = l->gmax[0] = NO_MAX;
    }
    for (int32_t i = 0; i < a->n; i++) {
        a->node[i].key = order_key(a, i);
        wfm_entry x = entry_of(a, i);
        list_insert(a, &a->list[0], &x);
        if (a->node[i].loc >= 0) list_insert(a, &a->list[1 + a->node[i].loc], &x);
    }
    return 0;
}

int wfm_alloc_rebuild(wfm_alloc *a, int32_t block_entries) {
    if (block_entries < 4 || block_entries > WFM_BLOCK || block_entries % 2) return -1;
    for (int32_t t = 0; t <= a->nloc; t++) {
        wfm_list *l = &a->list[t];
        free(l->blk);
        free(l->first);
        free(l->bmax);
        free(l->gmax);
        memset(l, 0, sizeof *l);
    }
    free(a->pool);
    free(a->free_blk);
    a->pool = NULL;
    a->free_blk = NULL;
    a->bsize = block_entries;
    return wfm_alloc_build(a);
}

/* --- operations ----------------------------------------------------------- */

int32_t wfm_reserve(wfm_alloc *a, int32_t servers, int32_t c, int64_t m, int64_t s,
                    int32_t ntiers, const int32_t *tier_start, const int32_t *locs,
                    int32_t *out_nodes, int32_t *out_cores) {
    int32_t found = 0;
    if (servers > a->n) servers = a->n + 1; /* cannot fit; still count what fits */
    if (ntiers == 0) {
        /* The first `servers` fitting datanodes in key order. */
        int32_t b = 0;
        uint64_t lo = 0;
        while (found < servers) {
            uint64_t key = list_next_fit(a, &a->list[0], &b, lo, c, m, s);
            if (key == UINT64_MAX) break;
            a->chosen[found++] = (int32_t)(uint32_t)key;
            lo = key + 1;
        }
    } else {
        /* Per tier, merge the locations' lists in key order (a cursor each). */
        int32_t *cur_b = a->cur_b;
        uint64_t *cur_lo = a->cur_lo, *next = a->cur_x;
        for (int32_t t = 0; t < ntiers && found < servers; t++) {
            const int32_t *tl = locs + tier_start[t];
            int32_t nl = tier_start[t + 1] - tier_start[t];
            for (int32_t k = 0; k < nl; k++) {
                cur_b[k] = 0;
                cur_lo[k] = 0;
                next[k] = list_next_fit(a, &a->list[1 + tl[k]], &cur_b[k], 0, c, m, s);
            }
            while (found < servers) {
                int32_t best = 0;
                for (int32_t k = 1; k < nl; k++)
                    if (next[k] < next[best]) best = k;
                if (nl == 0 || next[best] == UINT64_MAX) break;
                a->chosen[found++] = (int32_t)(uint32_t)next[best];
                cur_lo[best] = next[best] + 1;
                next[best] = list_next_fit(a, &a->list[1 + tl[best]], &cur_b[best], cur_lo[best],
                                           c, m, s);
            }
        }
    }
    if (found < servers) return found;
    for (int32_t k = 0; k < found; k++) {
        int32_t i = a->chosen[k];
        a->node[i].free_c -= c;
        a->node[i].free_m -= m;
        a->node[i].free_s -= s;
        if (c) take_lowest(a->bits + (size_t)i * WFM_CORE_WORDS, c, out_cores + (size_t)k * c);
        node_changed(a, i);
        out_nodes[k] = i;
    }
    return found;
}

/* Set (or clear) the bits of core ids cores[0..n-1] in w, one word at a time
 * (ids of one word are accumulated in a register, not or-ed into memory one
 * by one: that chain of stores and loads cost ~30 ns per reservation). */
static void set_cores(uint64_t *w, const int32_t *cores, int32_t n, int set) {
    int32_t word = -1;
    uint64_t acc = 0;
    for (int32_t k = 0; k < n; k++) {
        int32_t j = cores[k] >> 6;
        if (j != word) {
            if (word >= 0) w[word] = set ? w[word] | acc : w[word] & ~acc;
            word = j;
            acc = 0;
        }
        acc |= 1ull << (cores[k] & 63);
    }
    if (word >= 0) w[word] = set ? w[word] | acc : w[word] & ~acc;
}

void wfm_give_back(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores, int64_t m,
                   int64_t s) {
    set_cores(a->bits + (size_t)i * WFM_CORE_WORDS, cores, ncores, 1);
    a->node[i].free_c += ncores;
    a->node[i].free_m += m;
    a->node[i].free_s += s;
    node_changed(a, i);
}

int wfm_can_take_exact(const wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores,
                       int64_t m, int64_t s) {
    const uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
    for (int32_t k = 0; k < ncores; k++)
        if (!(w[cores[k] >> 6] & (1ull << (cores[k] & 63)))) return 0;
    return a->node[i].free_m >= m && a->node[i].free_s >= s;
}

static void take_exact(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores,
                       int64_t m, int64_t s) {
    set_cores(a->bits + (size_t)i * WFM_CORE_WORDS, cores, ncores, 0);
    a->node[i].free_c -= ncores;
    a->node[i].free_m -= m;
    a->node[i].free_s -= s;
}

void wfm_take_exact(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores, int64_t m,
                    int64_t s) {
    take_exact(a, i, cores, ncores, m, s);
    node_changed(a, i);
}

void wfm_take_exact_unlisted(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores,
                             int64_t m, int64_t s) {
    take_exact(a, i, cores, ncores, m, s);
    a->version[i]++;
}

int32_t wfm_free_cores(const wfm_alloc *a, int32_t i, int32_t *out) {
    const uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
    int32_t n = 0;
    for (int j = 0; j < WFM_CORE_WORDS; j++)
        for (uint64_t x = w[j]; x; x &= x - 1) out[n++] = j * 64 + __builtin_ctzll(x);
    return n;
}

/* --- self check (tests) ---------------------------------------------------- */

/* 0 if list t holds exactly its members, sorted, with true entries, first
 * keys and maxima, and the block invariants; else a code > 0. */
static int check_list(const wfm_alloc *a, int32_t t, int32_t *nblocks) {
    const wfm_list *l = &a->list[t];
    int32_t count = 0, members = 0;
    wfm_max gx = NO_MAX;
    if (l->nb < 1 || l->nb > l->cap || l->which != (t > 0)) return 10;
    *nblocks = l->nb;
    for (int32_t i = 0; i < a->n; i++)
        if (t == 0 || a->node[i].loc == t - 1) members++;
    for (int32_t b = 0; b < l->nb; b++) {
        const wfm_block *bk = block(a, l, b);
        if (bk->n < (l->nb > 1 ? 1 : 0) || bk->n > a->bsize || bk->pos != b) return 11;
        if (b > 0 && bk->n + block(a, l, b - 1)->n <= HALF) return 12;
        if (b > 1 && l->first[b] <= l->first[b - 1]) return 13;
        wfm_max mx = NO_MAX;
        for (int32_t k = 0; k < bk->n; k++) {
            const wfm_entry x = block_get(bk, k), *e = &x;
            int32_t i = (int32_t)(uint32_t)e->key;
            if (b > 0 && e->key < l->first[b]) return 14;
            if (b + 1 < l->nb && e->key >= l->first[b + 1]) return 14;
            count++;
            if (i < 0 || i >= a->n) return 15;
            if (t > 0 && a->node[i].loc != t - 1) return 16;
            if (e->key != a->node[i].key || e->key != order_key(a, i)) return 17;
            if (e->c != a->node[i].free_c || e->m != a->node[i].free_m || e->s != a->node[i].free_s)
                return 18;
            /* Each member's slot points at its one entry, so no datanode is twice. */
            const wfm_slot *sl = &a->slot[l->which][i];
            if (sl->blk != l->blk[b] || sl->idx != k) return 22;
            max_with(&mx, e->c, e->m, e->s);
        }
        if (mx.c != l->bmax[b].c || mx.m != l->bmax[b].m || mx.s != l->bmax[b].s) return 19;
        if (b % WFM_GROUP == 0) gx = NO_MAX;
        max_with(&gx, mx.c, mx.m, mx.s);
        if (b % WFM_GROUP == WFM_GROUP - 1 || b == l->nb - 1) {
            const wfm_max *g = &l->gmax[b / WFM_GROUP];
            if (gx.c != g->c || gx.m != g->m || gx.s != g->s) return 21;
        }
    }
    return count == members ? 0 : 20;
}

int wfm_check(const wfm_alloc *a) {
    int32_t blocks = 0;
    for (int32_t i = 0; i < a->n; i++) {
        const uint64_t *w = a->bits + (size_t)i * WFM_CORE_WORDS;
        int32_t pc = 0;
        for (int j = 0; j < WFM_CORE_WORDS; j++) pc += __builtin_popcountll(w[j]);
        if (pc != a->node[i].free_c) return 1;
        if (a->node[i].free_c < 0 || a->node[i].free_m < 0 || a->node[i].free_s < 0) return 2;
        if (a->node[i].free_c > a->cap_c[i] || a->node[i].free_m > a->cap_m[i] ||
            a->node[i].free_s > a->cap_s[i])
            return 3;
    }
    for (int32_t t = 0; t <= a->nloc; t++) {
        int32_t nb;
        int r = check_list(a, t, &nb);
        if (r) return r;
        blocks += nb;
    }
    int64_t total = 0;
    for (int32_t t = 0; t <= a->nloc; t++) total += a->list[t].cap;
    if (blocks + a->nfree != total) return 4;
    return 0;
}
