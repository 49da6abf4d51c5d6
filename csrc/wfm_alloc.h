/* The compiled allocator's core: per-datanode free capacity, free core
 * bitsets, and an ordered index that finds the best datanode that fits.
 *
 * The rules it implements are those of
 * src/wfm_orchestrator/allocator/reference.py; see docs/allocator.md.
 *
 * Plain C99 (plus unsigned __int128 for one exact multiply-divide, and an
 * AVX2 block scan chosen at run time on x86-64), no Python.
 *
 * Index: per set of datanodes, a list of blocks over key ranges (a
 * two-level B-tree), key = (order level << 32 | inventory index). Block b
 * holds the keys in [first[b], first[b + 1]), unordered, with the free
 * (cores, memory, storage) of each; blocks and groups of WFM_GROUP blocks
 * keep the component-wise maxima. The first datanode in key order that
 * fits a demand is the smallest fitting key of the first block that has
 * one; the maxima skip blocks and groups that cannot hold it. A change of
 * free capacity rewrites the entry in place when its new key stays in its
 * block's range, else swap-deletes it and appends it to the block of the
 * new range (a full block is split at its median, two neighbours that fit
 * in half a block are merged). Every datanode sits in two such lists: the
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
#define WFM_BLOCK 32 /* entries per block of a list, at most */
#define WFM_GROUP 16 /* blocks per group (second level of maxima) */

/* One entry of a list (32 bytes): a datanode's key and free capacity. */
typedef struct {
    uint64_t key; /* level << 32 | index */
    int64_t m, s;
    int32_t c, pad;
} wfm_entry;

/* Up to WFM_BLOCK entries (in no particular order), one array per field so
 * that a search compares 4 entries per vector instruction. */
typedef struct {
    int32_t n;   /* entries in use */
    int32_t pos; /* where the block is in its list */
    int32_t c[WFM_BLOCK];
    uint64_t key[WFM_BLOCK];
    int64_t m[WFM_BLOCK], s[WFM_BLOCK];
} wfm_block;

/* Where a datanode's entry is in one list: block id and index in the block. */
typedef struct {
    int32_t blk, idx;
} wfm_slot;

/* Component-wise maxima of free capacity over a block or a group of blocks
 * (-1 over nothing: no demand fits). */
typedef struct {
    int64_t m, s;
    int32_t c, pad;
} wfm_max;

/* An ordered set of datanodes, cut into key ranges: block b holds the keys
 * in [first[b], first[b + 1]) (from 0 for the first block, to the end for
 * the last), in no order inside the block. Blocks are nonempty, except the
 * only one of an empty list; any two neighbouring blocks hold more than
 * WFM_BLOCK / 2 entries together, so a list of N entries has fewer than
 * 4N/WFM_BLOCK + 2 blocks (the arrays are sized for that once). Blocks b of
 * group b / WFM_GROUP share a second level of maxima, so a search skips
 * WFM_GROUP blocks at a time. */
typedef struct {
    int32_t nb, cap;  /* blocks in use; capacity of the arrays below */
    int32_t which;    /* 0: the list of every datanode, 1: a location's list */
    int32_t *blk;     /* block ids (into wfm_alloc.pool), in key order */
    uint64_t *first;  /* lower bound of each block's keys (first[0] is not read) */
    wfm_max *bmax;    /* maxima of each block */
    wfm_max *gmax;    /* maxima of each group of WFM_GROUP blocks */
} wfm_list;

/* The state of a datanode (32 bytes). */
typedef struct {
    uint64_t key;    /* level << 32 | index */
    int64_t free_m, free_s;
    int32_t free_c;  /* free now */
    int32_t loc;     /* location id, -1 for none */
} wfm_node;

typedef struct {
    int32_t n;        /* datanodes */
    int32_t nloc;     /* locations */
    int policy;
    int32_t bsize;    /* entries per block, at most (WFM_BLOCK; less in tests) */
    int32_t *cap_c;   /* capacity */
    int64_t *cap_m, *cap_s;
    wfm_node *node;   /* free capacity, key, location */
    double *inv;      /* 3 per datanode: WFM_LEVELS / capacity (0 if none) */
    uint64_t *magic;  /* 3 per datanode: ceil(2**64 / capacity), or 0 (see magic_of) */
    uint64_t *bits;   /* n * WFM_CORE_WORDS words: bit set = core id free */
    uint32_t *version; /* per datanode: changes each time its free resources do (readers
                          keep what they made of a datanode until it changes) */
    wfm_list *list;   /* list[0]: every datanode; list[1 + l]: location l */
    wfm_block *pool;  /* blocks of every list */
    int32_t *free_blk, nfree; /* stack of unused block ids */
    wfm_slot *slot[2]; /* per datanode: its entry in list 0, in its location's list */
    int32_t *chosen;  /* scratch for reserve: servers <= n */
    int32_t *cur_b;   /* scratch for reserve, per location: cursor block, */
    uint64_t *cur_lo, *cur_x; /* lowest key still wanted, next key found */
} wfm_alloc;

/* Allocate an empty allocator for n datanodes in nloc locations; NULL on OOM. */
wfm_alloc *wfm_alloc_new(int32_t n, int32_t nloc, int policy);
void wfm_alloc_free(wfm_alloc *a);

/* Describe datanode i (before wfm_alloc_build): its location id (-1 none),
 * its core ids (ncores of them, each 0..1023, distinct), memory, storage. */
void wfm_alloc_set_node(wfm_alloc *a, int32_t i, int32_t loc, const int32_t *cores,
                        int32_t ncores, int64_t msize, int64_t ssize);
/* Build the index once every datanode is set; 0 on success, -1 on OOM. */
int wfm_alloc_build(wfm_alloc *a);

/* Rebuild the index from the current state with blocks of at most
 * block_entries (even, 4..WFM_BLOCK) entries: small blocks exercise the
 * block splits, merges and groups in tests. 0 on success. */
int wfm_alloc_rebuild(wfm_alloc *a, int32_t block_entries);

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

/* Give back what a reservation took on datanode i (ncores core ids). */
void wfm_give_back(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores, int64_t m,
                   int64_t s);

/* Can datanode i give exactly these core ids and sizes now? 1 yes, 0 no. */
int wfm_can_take_exact(const wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores,
                       int64_t m, int64_t s);
/* Take them (after wfm_can_take_exact said yes). */
void wfm_take_exact(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores, int64_t m,
                    int64_t s);
/* The same, leaving datanode i where it was in the ordered lists: for a start's many
 * restores, after which the caller rebuilds the lists once (wfm_alloc_rebuild); moving
 * the datanode at each take was a third of a restore's time. Nothing may search the
 * lists in between. */
void wfm_take_exact_unlisted(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores,
                             int64_t m, int64_t s);

/* Write the free core ids of datanode i ascending into out (>= 1024 ints);
 * returns how many. */
int32_t wfm_free_cores(const wfm_alloc *a, int32_t i, int32_t *out);

/* Scan blocks with AVX2 (if want and the CPU has it) or with the plain
 * loop; returns 1 if AVX2 is used. Process-wide; the default is AVX2 when
 * available. For tests and measurements. */
int wfm_use_avx2(int want);

/* Check the index against a full recomputation; returns 0 if consistent. */
int wfm_check(const wfm_alloc *a);

#endif
