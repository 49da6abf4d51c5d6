/* The compiled allocator's core: per-datanode free capacity, free core
 * bitsets, and an ordered index that finds the best datanode that fits.
 *
 * Plain C99 (plus unsigned __int128 for one exact multiply-divide), no
 * Python. The rules it implements are those of
 * src/wfm_orchestrator/allocator/reference.py; see docs/allocator.md.
 *
 * Index: a treap (randomised binary search tree) ordered by
 * key = (order level << 32 | inventory index), where each vertex also keeps
 * the component-wise maximum of free (cores, memory, storage) over its
 * subtree. The first datanode in key order that fits a demand is found by a
 * left-first descent that skips every subtree whose maxima cannot hold the
 * demand. Every datanode sits in two treaps that share this layout: the
 * global one (requests without locations) and the one of its location.
 */
#ifndef WFM_ALLOC_H
#define WFM_ALLOC_H

#include <stdint.h>

#define WFM_CORE_WORDS 16 /* 16 x 64 bits: core ids 0..1023 */
#define WFM_LEVELS 1024u        /* fill level of one dimension: 0..WFM_LEVELS */
#define WFM_TIGHT_WEIGHT 4096u  /* > 3 * WFM_LEVELS: the tightest dimension decides first */
#define WFM_MAX_LEVEL (WFM_LEVELS * WFM_TIGHT_WEIGHT + 3u * WFM_LEVELS)
#define WFM_POLICY_PACK 0
#define WFM_POLICY_SPREAD 1

/* One vertex of a treap (32 bytes, arrays of structs for locality). */
typedef struct {
    int32_t left, right; /* children, -1 for none */
    int32_t max_c, pad;  /* subtree maxima of free cores, memory, storage */
    int64_t max_m, max_s;
} wfm_vertex;

typedef struct {
    wfm_vertex *v;  /* indexed by datanode */
    int32_t *root;  /* one root per tree of this forest */
    int32_t ntrees;
} wfm_forest;

/* What the index reads of a datanode (32 bytes). */
typedef struct {
    uint64_t key;    /* level << 32 | index */
    int64_t free_m, free_s;
    int32_t free_c;  /* free now */
    uint32_t prio;   /* treap heap priority (a hash of the index) */
} wfm_node;

typedef struct {
    int32_t n;        /* datanodes */
    int32_t nloc;     /* locations */
    int policy;
    int32_t *loc;     /* location id of each datanode, -1 for none */
    int32_t *cap_c;   /* capacity */
    int64_t *cap_m, *cap_s;
    wfm_node *node;   /* free capacity, key, priority */
    uint64_t *bits;   /* n * WFM_CORE_WORDS words: bit set = core id free */
    wfm_forest all;   /* one tree: every datanode */
    wfm_forest byloc; /* one tree per location */
    int32_t *chosen;  /* scratch for reserve: servers <= n */
} wfm_alloc;

/* Allocate an empty allocator for n datanodes in nloc locations; NULL on OOM. */
wfm_alloc *wfm_alloc_new(int32_t n, int32_t nloc, int policy);
void wfm_alloc_free(wfm_alloc *a);

/* Describe datanode i (before wfm_alloc_build): its location id (-1 none),
 * its core ids (ncores of them, each 0..1023, distinct), memory, storage. */
void wfm_alloc_set_node(wfm_alloc *a, int32_t i, int32_t loc, const int32_t *cores,
                        int32_t ncores, int64_t msize, int64_t ssize);
/* Build the index once every datanode is set. */
void wfm_alloc_build(wfm_alloc *a);

/* Choose `servers` distinct datanodes for a per-server demand (c, m, s).
 * tiers: ntiers groups of location ids (tier t is locs[tier_start[t] ..
 * tier_start[t+1]-1]); ntiers == 0 means "every datanode". On success
 * (return == servers) the demand is taken: out_nodes[k] is the k-th
 * datanode chosen and out_cores[k*c .. k*c+c-1] its core ids, ascending.
 * Otherwise nothing changes and the return value is how many fitting
 * datanodes were found (< servers). */
int32_t wfm_reserve(wfm_alloc *a, int32_t servers, int32_t c, int64_t m, int64_t s,
                    int32_t ntiers, const int32_t *tier_start, const int32_t *locs,
                    int32_t *out_nodes, int32_t *out_cores) __attribute__((nonnull(1)));

/* Give back what a reservation took on datanode i. */
void wfm_give_back(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores, int64_t m,
                   int64_t s);

/* Can datanode i give exactly these core ids and sizes now? 1 yes, 0 no. */
int wfm_can_take_exact(const wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores,
                       int64_t m, int64_t s);
/* Take them (after wfm_can_take_exact said yes). */
void wfm_take_exact(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores, int64_t m,
                    int64_t s);

/* Write the free core ids of datanode i ascending into out (>= 1024 ints);
 * returns how many. */
int32_t wfm_free_cores(const wfm_alloc *a, int32_t i, int32_t *out);

/* Check the index against a full recomputation; returns 0 if consistent. */
int wfm_check(const wfm_alloc *a);

#endif
