# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled allocator: the same class as reference.Allocator, over csrc/wfm_alloc.c.

Only the hot path exists twice. Records, input checks, the inventory and
every error message are imported from reference.py: when a fast check
here does not pass, the shared check is called and raises exactly what the
reference raises. The placement itself (order, tiers, core ids) is done by
the C core and must equal the reference's; tests/unit/test_allocator_agree.py
drives both with the same random operations.
"""

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free as c_free, malloc, realloc
from libc.string cimport memset
from cpython.dict cimport PyDict_SetDefault

import contextlib

from ..errors import DuplicateReservation, InvalidDemand, NoCapacity, UnknownReservation
from .reference import (
    MAX_SIZE,
    Datanode,
    Free,
    Inventory,
    Placement,
    check_demand,
    check_name,
    check_policy,
    explain_never_fits,
    explain_no_room,
    fits_ever,
    restore_conflict,
)

cdef extern from "wfm_alloc.h" nogil:
    ctypedef struct wfm_node:
        int64_t free_m
        int64_t free_s
    ctypedef struct wfm_alloc:
        int32_t n
        int32_t bsize
        wfm_node *node
        uint32_t *version
    int WFM_POLICY_PACK
    int WFM_POLICY_SPREAD
    wfm_alloc *wfm_alloc_new(int32_t n, int32_t nloc, int policy)
    void wfm_alloc_free(wfm_alloc *a)
    void wfm_alloc_set_node(wfm_alloc *a, int32_t i, int32_t loc, const int32_t *cores,
                            int32_t ncores, int64_t msize, int64_t ssize)
    int wfm_alloc_build(wfm_alloc *a)
    int wfm_alloc_rebuild(wfm_alloc *a, int32_t block_entries)
    int32_t wfm_reserve(wfm_alloc *a, int32_t servers, int32_t c, int64_t m, int64_t s,
                        int32_t ntiers, const int32_t *tier_start, const int32_t *locs,
                        int32_t *out_nodes, int32_t *out_cores)
    void wfm_give_back(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores,
                       int64_t m, int64_t s)
    int wfm_can_take_exact(const wfm_alloc *a, int32_t i, const int32_t *cores,
                           int32_t ncores, int64_t m, int64_t s)
    void wfm_take_exact(wfm_alloc *a, int32_t i, const int32_t *cores, int32_t ncores,
                        int64_t m, int64_t s)
    void wfm_take_exact_unlisted(wfm_alloc *a, int32_t i, const int32_t *cores,
                                 int32_t ncores, int64_t m, int64_t s)
    int32_t wfm_free_cores(const wfm_alloc *a, int32_t i, int32_t *out)
    int wfm_check(const wfm_alloc *a)
    int wfm_use_avx2(int want)

cdef extern from *:
    """
    /* A Placement is a namedtuple: a tuple subclass without instance dict.
       Allocating it with its type's tp_alloc and filling the slots is what
       tuple.__new__(Placement, (...)) does, without the argument tuples
       (about 0.4 us less per placement). Core ids come from a tuple of the
       int objects 0..1023 (no int object is created per core id).

       Recycling: release keeps a reference to the last WFM_SPARE lists it
       gave back. When such a list is referenced by nothing else any more
       (reference count 1: ours), and neither are its Placements and their
       core lists, nobody can observe it, so reserve refills it in place
       instead of freeing one list, tuple and core list and allocating new
       ones (what the free lists of CPython's own types do). */
    #define WFM_SPARE 8
    typedef struct {
        PyObject *list[WFM_SPARE];
        int next;
    } wfm_spare;

    static void wfm_spare_clear(wfm_spare *sp) {
        for (int k = 0; k < WFM_SPARE; k++) Py_CLEAR(sp->list[k]);
    }

    /* Keep (a new reference to) `placements`, just given back by release. */
    static inline void wfm_spare_keep(wfm_spare *sp, PyObject *placements) {
        PyObject *old = sp->list[sp->next];
        Py_INCREF(placements);
        sp->list[sp->next] = placements;
        sp->next = (sp->next + 1) & (WFM_SPARE - 1);
        Py_XDECREF(old);
    }

    /* A kept list of `found` placements that only we reference (taken out
       of sp: the caller owns the reference), or NULL. */
    static inline PyObject *wfm_spare_take(wfm_spare *sp, PyTypeObject *t, int32_t found) {
        for (int j = 1; j <= WFM_SPARE; j++) {
            int k = (sp->next - j) & (WFM_SPARE - 1);
            PyObject *l = sp->list[k];
            if (!l || Py_REFCNT(l) != 1 || PyList_GET_SIZE(l) != found) continue;
            int ok = 1;
            for (int32_t i = 0; i < found && ok; i++) {
                PyObject *p = PyList_GET_ITEM(l, i);
                ok = Py_TYPE(p) == t && Py_REFCNT(p) == 1 &&
                     PyList_CheckExact(PyTuple_GET_ITEM(p, 1)) &&
                     Py_REFCNT(PyTuple_GET_ITEM(p, 1)) == 1;
            }
            if (!ok) continue;
            sp->list[k] = NULL;
            return l;
        }
        return NULL;
    }

    /* Release a reference taken out of a recycled record. Exact ints and
       strs (what reserve and restore put there) are freed at once: that runs
       no Python code. Anything else (a caller may have put it into a core
       list) waits in `later` until the record is complete. */
    typedef struct {
        PyObject *o[32];
        int n;
    } wfm_later;

    static inline void wfm_drop(wfm_later *later, PyObject *o) {
        if (PyLong_CheckExact(o) || PyUnicode_CheckExact(o) || later->n == 32)
            Py_DECREF(o);
        else
            later->o[later->n++] = o;
    }

    static inline void wfm_set(wfm_later *later, PyObject **at, PyObject *v) {
        PyObject *old = *at;
        Py_INCREF(v);
        *at = v;
        wfm_drop(later, old);
    }

    /* Refill recycled list `result` (see wfm_spare_take); 0, or -1 on OOM
       (then result is freed). */
    static int wfm_refill(PyObject *result, PyObject *names, PyObject *const *id,
                          const int32_t *nodes, const int32_t *cores, int32_t found, int32_t c,
                          PyObject *m, PyObject *s) {
        wfm_later later;
        later.n = 0;
        for (int32_t k = 0; k < found; k++) {
            PyObject **r = ((PyTupleObject *)PyList_GET_ITEM(result, k))->ob_item;
            PyListObject *cl = (PyListObject *)r[1];
            Py_ssize_t old = Py_SIZE(cl);
            if (c > cl->allocated) {
                PyObject **items = PyMem_Realloc(cl->ob_item, (size_t)c * sizeof(PyObject *));
                if (!items) {
                    Py_DECREF(result);
                    PyErr_NoMemory();
                    return -1;
                }
                cl->ob_item = items;
                cl->allocated = c;
            }
            PyObject **item = cl->ob_item;
            const int32_t *ck = cores + (size_t)k * c;
            int32_t j = 0;
            for (; j < c && j < old; j++) wfm_set(&later, &item[j], id[ck[j]]);
            for (; j < c; j++) {
                PyObject *v = id[ck[j]];
                Py_INCREF(v);
                item[j] = v;
            }
            for (Py_ssize_t x = c; x < old; x++) wfm_drop(&later, item[x]);
            Py_SET_SIZE(cl, c);
            wfm_set(&later, &r[0], PyTuple_GET_ITEM(names, nodes[k]));
            wfm_set(&later, &r[2], m);
            wfm_set(&later, &r[3], s);
        }
        for (int k = 0; k < later.n; k++) Py_DECREF(later.o[k]);
        return 0;
    }

    /* One Placement (server, [ids[cores[0..c-1]]], m, s), as wfm_placements makes
       each of its records: restore makes one per live reservation at a start. */
    static PyObject *wfm_placement(PyObject *type, PyObject *server, PyObject *ints,
                                   const int32_t *cores, int32_t c, PyObject *m, PyObject *s) {
        PyTypeObject *t = (PyTypeObject *)type;
        PyObject *const *id = ((PyTupleObject *)ints)->ob_item;
        PyObject *core_list = PyList_New(c);
        if (!core_list) return NULL;
        for (int32_t j = 0; j < c; j++) {
            PyObject *v = id[cores[j]];
            Py_INCREF(v);
            PyList_SET_ITEM(core_list, j, v);
        }
        PyObject *r = t->tp_alloc(t, 4);
        if (!r) {
            Py_DECREF(core_list);
            return NULL;
        }
        Py_INCREF(server); PyTuple_SET_ITEM(r, 0, server);
        PyTuple_SET_ITEM(r, 1, core_list);
        Py_INCREF(m); PyTuple_SET_ITEM(r, 2, m);
        Py_INCREF(s); PyTuple_SET_ITEM(r, 3, s);
        return r;
    }

    static PyObject *wfm_placements(PyObject *type, PyObject *names, PyObject *ints,
                                    const int32_t *nodes, const int32_t *cores, int32_t found,
                                    int32_t c, PyObject *m, PyObject *s, wfm_spare *sp) {
        PyTypeObject *t = (PyTypeObject *)type;
        PyObject *const *id = ((PyTupleObject *)ints)->ob_item;
        PyObject *result = wfm_spare_take(sp, t, found);
        if (result) {
            if (wfm_refill(result, names, id, nodes, cores, found, c, m, s) < 0) return NULL;
            return result;
        }
        result = PyList_New(found);
        if (!result) return NULL;
        for (int32_t k = 0; k < found; k++) {
            PyObject *r = wfm_placement(type, PyTuple_GET_ITEM(names, nodes[k]), ints,
                                        cores + (size_t)k * c, c, m, s);
            if (!r) goto fail;
            PyList_SET_ITEM(result, k, r);
        }
        return result;
    fail:
        Py_DECREF(result);
        return NULL;
    }

    /* Datanode names -> index by identity: every Placement this module
       builds holds the inventory's own name objects, so a release finds the
       datanode with a pointer hash instead of a dict lookup. */
    typedef struct {
        PyObject **key;
        int32_t *index;
        size_t mask;
    } wfm_names;

    static inline size_t wfm_names_hash(const wfm_names *t, PyObject *o) {
        return (size_t)(((uintptr_t)o >> 4) * 0x9E3779B97F4A7C15ull) & t->mask;
    }

    static int wfm_names_init(wfm_names *t, PyObject *names) {
        Py_ssize_t n = PyTuple_GET_SIZE(names);
        size_t size = 8;
        while (size < 2 * (size_t)n) size *= 2;
        t->key = calloc(size, sizeof *t->key);
        t->index = malloc(size * sizeof *t->index);
        t->mask = size - 1;
        if (!t->key || !t->index) return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *o = PyTuple_GET_ITEM(names, i);
            size_t h = wfm_names_hash(t, o);
            while (t->key[h]) h = (h + 1) & t->mask;
            t->key[h] = o;
            t->index[h] = (int32_t)i;
        }
        return 0;
    }

    static void wfm_names_free(wfm_names *t) {
        free(t->key);
        free(t->index);
    }

    /* Index of datanode name o, or -1 if o is not one of the name objects. */
    static inline int32_t wfm_names_find(const wfm_names *t, PyObject *o) {
        size_t h = wfm_names_hash(t, o);
        while (t->key[h]) {
            if (t->key[h] == o) return t->index[h];
            h = (h + 1) & t->mask;
        }
        return -1;
    }

    /* An int object's value, without a call for the small ones (core ids). */
    static inline long wfm_int_value(PyObject *v) {
    #if PY_VERSION_HEX < 0x030C0000
        if (PyLong_CheckExact(v)) {
            Py_ssize_t size = Py_SIZE(v);
            if (size == 0) return 0;
            if (size == 1) return (long)((PyLongObject *)v)->ob_digit[0];
        }
    #else
        if (PyLong_CheckExact(v) && _PyLong_IsCompact((PyLongObject *)v))
            return (long)_PyLong_CompactValue((PyLongObject *)v);
    #endif
        return PyLong_AsLong(v);
    }

    /* Give back every placement of `placements` (built by reserve or
       restore): 0, or -1 with an exception set. */
    static int wfm_release_list(wfm_alloc *a, const wfm_names *names, PyObject *index_of,
                                PyObject *placements, int32_t *buf, Py_ssize_t buf_len) {
        Py_ssize_t np = PyList_GET_SIZE(placements);
        for (Py_ssize_t k = 0; k < np; k++) {
            PyObject *p = PyList_GET_ITEM(placements, k);
            PyObject *server = PyTuple_GET_ITEM(p, 0), *cl = PyTuple_GET_ITEM(p, 1);
            int32_t i = wfm_names_find(names, server);
            if (i < 0) {
                PyObject *v = PyDict_GetItemWithError(index_of, server);
                if (!v) {
                    if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, server);
                    return -1;
                }
                i = (int32_t)PyLong_AsLong(v);
            }
            if (!PyList_Check(cl) || PyList_GET_SIZE(cl) > buf_len) {
                PyErr_SetString(PyExc_ValueError, "a held core_list was changed");
                return -1;
            }
            Py_ssize_t nc = PyList_GET_SIZE(cl);
            for (Py_ssize_t j = 0; j < nc; j++) {
                long id = wfm_int_value(PyList_GET_ITEM(cl, j));
                if (id < 0 || id > 1023) {
                    if (!PyErr_Occurred())
                        PyErr_SetString(PyExc_ValueError, "a held core_list was changed");
                    return -1;
                }
                buf[j] = (int32_t)id;
            }
            long long m = PyLong_AsLongLong(PyTuple_GET_ITEM(p, 2));
            long long s = PyLong_AsLongLong(PyTuple_GET_ITEM(p, 3));
            if ((m == -1 || s == -1) && PyErr_Occurred()) return -1;
            wfm_give_back(a, i, buf, (int32_t)nc, m, s);
        }
        return 0;
    }
    """
    ctypedef struct wfm_names:
        void *key
        int32_t *index
    ctypedef struct wfm_spare:
        pass
    void wfm_spare_clear(wfm_spare *sp)
    void wfm_spare_keep(wfm_spare *sp, list placements)
    int wfm_names_init(wfm_names *t, object names) except -1
    void wfm_names_free(wfm_names *t)
    int wfm_release_list(wfm_alloc *a, const wfm_names *names, dict index_of, list placements,
                         int32_t *buf, Py_ssize_t buf_len) except -1
    object wfm_placement(object type, object server, tuple ints, const int32_t *cores,
                         int32_t c, object m, object s)
    list wfm_placements(object type, tuple names, tuple ints, const int32_t *nodes,
                        const int32_t *cores, int32_t found, int32_t c, object m, object s,
                        wfm_spare *sp)

if not (issubclass(Placement, tuple) and Placement.__basicsize__ == tuple.__basicsize__
        and Placement.__itemsize__ == tuple.__itemsize__ and len(Placement._fields) == 4):
    raise ImportError("reference.Placement must be a 4-field namedtuple")

cdef int64_t _MAX = MAX_SIZE  # 2**62: sizes are below it


cdef inline bint _plain_demand(object servers, object cores, object msize, object ssize,
                               int64_t* d):
    """The demand in ``d`` if it is plain ints in range: the checks in Python can be skipped."""
    if not (type(servers) is int and type(cores) is int
            and type(msize) is int and type(ssize) is int):
        return False
    try:
        d[0] = servers
        d[1] = cores
        d[2] = msize
        d[3] = ssize
    except OverflowError:
        return False
    return 1 <= d[0] < _MAX and 0 <= d[1] < _MAX and 0 <= d[2] < _MAX and 0 <= d[3] < _MAX


def _use_avx2(want):
    """Scan index blocks with AVX2 (when the CPU has it) or the plain loop; True if AVX2.

    Process-wide; AVX2 is the default when available. For tests and measurements.
    """
    return bool(wfm_use_avx2(1 if want else 0))


cdef class _Tiers:
    """Candidate tiers of one `locations` value, as location ids for the C core."""

    cdef int32_t ntiers
    cdef int32_t *start
    cdef int32_t *locs
    cdef object cand  # reference.Candidates (for messages)

    def __cinit__(self):
        self.start = NULL
        self.locs = NULL

    def __dealloc__(self):
        c_free(self.start)
        c_free(self.locs)


@contextlib.contextmanager
def _restoring(allocator):
    allocator._order_later(True)
    try:
        yield allocator
    finally:
        allocator._order_later(False)


cdef class Allocator:
    """Reserves slices of datanodes; same API and results as reference.Allocator."""

    cdef wfm_alloc *_a
    cdef object _inv
    cdef dict _held        # name -> list of Placement (as returned by reserve)
    cdef dict _index_of    # datanode name -> index
    cdef tuple _names
    cdef tuple _ints       # the int objects 0..1023 (core ids of results)
    cdef wfm_names _name_ids  # datanode name object -> index (identity)
    cdef wfm_spare _spare  # lists given back by release, refilled by reserve once unused
    cdef dict _tiers       # tuple(locations) -> _Tiers
    cdef _Tiers _all
    cdef dict _loc_id
    cdef int32_t *_out_nodes
    cdef int32_t *_cores   # scratch: core ids out of / into the C core
    cdef Py_ssize_t _cores_len
    cdef readonly str policy
    cdef bint _unlisted    # inside restoring(): takes leave the ordered lists as they are

    def __cinit__(self):
        self._a = NULL
        self._out_nodes = NULL
        self._cores = NULL
        self._name_ids.key = NULL
        self._name_ids.index = NULL
        memset(&self._spare, 0, sizeof(self._spare))

    def __dealloc__(self):
        wfm_spare_clear(&self._spare)
        wfm_names_free(&self._name_ids)
        wfm_alloc_free(self._a)
        c_free(self._out_nodes)
        c_free(self._cores)

    def __init__(self, datanodes, policy="pack", neighbours=None):
        cdef int32_t i, k, n, ncores
        self.policy = check_policy(policy)
        inv = Inventory(datanodes, neighbours)
        self._inv = inv
        self._names = inv.names
        self._ints = tuple(range(1024))
        if wfm_names_init(&self._name_ids, self._names) != 0:
            raise MemoryError()
        self._index_of = inv.index_of
        self._held = {}
        self._tiers = {}
        self._loc_id = {loc: k for k, loc in enumerate(inv.locations)}
        n = len(inv.datanodes)
        self._a = wfm_alloc_new(
            n, len(inv.locations), WFM_POLICY_PACK if policy == "pack" else WFM_POLICY_SPREAD
        )
        self._out_nodes = <int32_t *> malloc((n + 1) * sizeof(int32_t))
        self._cores_len = 1024
        self._cores = <int32_t *> malloc(self._cores_len * sizeof(int32_t))
        if self._a == NULL or self._out_nodes == NULL or self._cores == NULL:
            raise MemoryError()
        for i in range(n):
            dn = inv.datanodes[i]
            ncores = len(dn.cores)
            for k in range(ncores):
                self._cores[k] = dn.cores[k]
            loc = -1 if dn.location is None else self._loc_id[dn.location]
            wfm_alloc_set_node(self._a, i, loc, self._cores, ncores, dn.msize, dn.ssize)
        if wfm_alloc_build(self._a) != 0:
            raise MemoryError()
        self._all = self._make_tiers(())

    cdef _Tiers _make_tiers(self, tuple checked):
        cdef _Tiers t = _Tiers()
        cdef int32_t k, j, nlocs
        cand = self._inv.candidates(checked)
        t.cand = cand
        if cand.location_tiers is None:
            t.ntiers = 0
            return t
        t.ntiers = len(cand.location_tiers)
        nlocs = sum(len(tier) for tier in cand.location_tiers)
        t.start = <int32_t *> malloc((t.ntiers + 1) * sizeof(int32_t))
        t.locs = <int32_t *> malloc((nlocs + 1) * sizeof(int32_t))
        if t.start == NULL or t.locs == NULL:
            raise MemoryError()
        j = 0
        for k, tier in enumerate(cand.location_tiers):
            t.start[k] = j
            for loc in tier:
                t.locs[j] = self._loc_id[loc]
                j += 1
        t.start[t.ntiers] = j
        return t

    cdef _Tiers _tiers_for(self, locations):
        """The tiers of `locations` (checked by the shared Inventory on a cache miss)."""
        if locations is None:
            return self._all
        t = None
        if type(locations) is list or type(locations) is tuple:
            try:
                t = self._tiers.get(tuple(locations))
            except TypeError:  # unhashable items: let the shared check say why
                t = None
        if t is not None:
            return t
        checked = self._inv.check_locations(locations)
        t = self._make_tiers(checked)
        if len(self._tiers) >= 1024:
            self._tiers.clear()
        self._tiers[tuple(locations)] = t
        return t

    cdef inline void _take_exact(self, int32_t i, const int32_t *cores, int32_t nc,
                                 int64_t m, int64_t s):
        """restore's take: inside restoring(), the datanode keeps its place in the lists."""
        if self._unlisted:
            wfm_take_exact_unlisted(self._a, i, cores, nc, m, s)
        else:
            wfm_take_exact(self._a, i, cores, nc, m, s)

    cdef int _ensure_cores(self, Py_ssize_t need) except -1:
        cdef int32_t *p
        if need > self._cores_len:
            p = <int32_t *> realloc(self._cores, need * sizeof(int32_t))
            if p == NULL:
                raise MemoryError()
            self._cores = p
            self._cores_len = need
        return 0

    # -- queries

    @property
    def datanodes(self):
        return self._names

    def __contains__(self, name):
        return isinstance(name, str) and name in self._held

    def __len__(self):
        return len(self._held)

    def reservation(self, name):
        if not isinstance(name, str) or name not in self._held:
            raise UnknownReservation(name)
        return list(self._held[name])

    def free(self, datanode):
        cdef int32_t i = self._inv.datanode(datanode)
        cdef int32_t k, n
        n = wfm_free_cores(self._a, i, self._cores)
        return Free([self._cores[k] for k in range(n)], self._a.node[i].free_m, self._a.node[i].free_s)

    def capacity(self, datanode):
        dn = self._inv.datanodes[self._inv.datanode(datanode)]
        return Free(list(dn.cores), dn.msize, dn.ssize)

    def version(self, datanode):
        return self._a.version[self._inv.datanode(datanode)]

    def can_fit_ever(self, servers, cores, msize, ssize, locations=None):
        cdef int64_t d[4]
        if not _plain_demand(servers, cores, msize, ssize, d):
            servers, cores, msize, ssize = check_demand(servers, cores, msize, ssize)
        cdef _Tiers t = self._all if locations is None else self._tiers_for(locations)
        return fits_ever(self._inv, t.cand, servers, cores, msize, ssize)

    def _check(self):
        """0 if the C index is consistent with the free capacities (for tests)."""
        return wfm_check(self._a)

    def restoring(self):
        """A context for a start's many ``restore`` calls: the datanodes' order (what
        ``reserve`` searches) is rebuilt once when it ends, not moved at each restore (a
        third of a restore's time). Nothing but ``restore`` may be called inside."""
        return _restoring(self)

    def _order_later(self, bint later):
        self._unlisted = later
        if not later and wfm_alloc_rebuild(self._a, self._a.bsize) != 0:
            raise MemoryError()

    def _rebuild(self, int block_entries):
        """Rebuild the C index with at most `block_entries` per block (for tests)."""
        if wfm_alloc_rebuild(self._a, block_entries) != 0:
            raise ValueError(f"cannot rebuild with {block_entries} entries per block")

    # -- changes

    def reserve(self, name, servers, cores, msize, ssize, locations=None):
        cdef int64_t sv, c, m, s
        cdef int64_t d[4]
        cdef int32_t found
        cdef _Tiers t
        cdef list result
        if type(name) is not str or len(<str> name) == 0:
            check_name(name)
        if _plain_demand(servers, cores, msize, ssize, d):
            sv, c, m, s = d[0], d[1], d[2], d[3]
        else:
            servers, cores, msize, ssize = check_demand(servers, cores, msize, ssize)
            sv, c, m, s = servers, cores, msize, ssize
        t = self._all if locations is None else self._tiers_for(locations)
        # A held name is refused after the C core placed the demand (see the
        # end), which saves a dict lookup on the normal path.

        if sv > self._a.n or c > 1024:
            found = 0  # cannot fit; the C core is not asked
        else:
            self._ensure_cores(sv * c)
            found = wfm_reserve(self._a, <int32_t> sv, <int32_t> c, m, s, t.ntiers, t.start,
                                t.locs, self._out_nodes, self._cores)
        if found < sv:
            if name in self._held:
                raise DuplicateReservation(name)
            self._no_capacity(t, sv, c, m, s, found)
        result = wfm_placements(Placement, self._names, self._ints, self._out_nodes,
                                self._cores, found, <int32_t> c, msize, ssize, &self._spare)
        if <object> PyDict_SetDefault(self._held, name, result) is not result:
            # The name was held: give back exactly what was taken (the index
            # depends only on the free capacities, so nothing is left of it).
            wfm_release_list(self._a, &self._name_ids, self._index_of, result, self._cores,
                             self._cores_len)
            raise DuplicateReservation(name)
        return result

    cdef int _no_capacity(self, _Tiers t, int64_t sv, int64_t c, int64_t m, int64_t s,
                          int32_t found) except -1:
        if not fits_ever(self._inv, t.cand, sv, c, m, s):
            raise NoCapacity(explain_never_fits(self._inv, t.cand, sv, c, m, s), ever=True)
        raise NoCapacity(explain_no_room(t.cand, sv, c, m, s, found))

    def release(self, name):
        cdef list placements
        placements = self._held.pop(name, None) if isinstance(name, str) else None
        if placements is None:
            raise UnknownReservation(name)
        wfm_release_list(self._a, &self._name_ids, self._index_of, placements, self._cores,
                         self._cores_len)
        wfm_spare_keep(&self._spare, placements)
        return placements

    def restore(self, name, placements):
        """Re-take exactly `placements` under `name` (rebuilding from the database)."""
        cdef int32_t i, j, nc
        cdef list held
        if type(name) is str and len(<str> name) > 0 and name not in self._held:
            held = self._restore_plain(name, placements)
            if held is not None:
                return held
        name = check_name(name)
        if name in self._held:
            raise DuplicateReservation(name)
        wanted = self._inv.check_placements(placements)
        for i, cores, msize, ssize in wanted:
            nc = len(cores)
            for j in range(nc):
                self._cores[j] = cores[j]
            if not wfm_can_take_exact(self._a, i, self._cores, nc, msize, ssize):
                free_ids = set(self.free(self._names[i]).core_list)
                taken = [c for c in cores if c not in free_ids]
                raise restore_conflict(name, self._inv.datanodes[i], msize, ssize, taken,
                                       self._a.node[i].free_m, self._a.node[i].free_s)
        held = []
        for i, cores, msize, ssize in wanted:
            nc = len(cores)
            for j in range(nc):
                self._cores[j] = cores[j]
            self._take_exact(i, self._cores, nc, msize, ssize)
            held.append(Placement(self._names[i], list(cores), msize, ssize))
        self._held[name] = held
        return held

    cdef list _restore_plain(self, str name, object placements):
        """`restore` of records as the store keeps them (a list of (server, ascending core
        ids, msize, ssize) with plain ints, distinct servers) that fit now: the held list,
        without the shared checks in Python (a restart restores every live reservation).
        None for anything else: the caller's shared checks then say exactly what is wrong.
        """
        cdef Py_ssize_t n, k, j, nc, at
        cdef int32_t i, prev, core
        cdef int64_t m, s
        cdef object p, cl, v
        if type(placements) is not list and type(placements) is not tuple:
            return None
        n = len(placements)
        if n == 0 or n > self._a.n:
            return None
        self._ensure_cores(n * 1024 + n)
        # Pass 1: check every record and that it fits (placements on distinct datanodes
        # are independent), the core ids of record k at self._cores[n + k * 1024].
        at = n
        for k in range(n):
            p = placements[k]
            if type(p) is not Placement and type(p) is not tuple and type(p) is not list:
                return None
            if len(p) != 4:
                return None
            i = <int32_t> self._index_of.get(p[0], -1) if type(p[0]) is str else -1
            if i < 0:
                return None
            for j in range(k):
                if self._cores[j] == i:
                    return None  # a datanode named twice
            self._cores[k] = i
            cl = p[1]
            if type(cl) is not list and type(cl) is not tuple:
                return None
            nc = len(cl)
            if nc > 1024:
                return None
            prev = -1
            for j in range(nc):
                v = cl[j]
                if type(v) is not int or not (prev < v <= 1023):
                    return None
                core = <int32_t> v
                self._cores[at + j] = core
                prev = core
            if type(p[2]) is not int or type(p[3]) is not int:
                return None
            if not (0 <= p[2] < _MAX and 0 <= p[3] < _MAX):
                return None
            m = p[2]
            s = p[3]
            if not wfm_can_take_exact(self._a, i, self._cores + at, <int32_t> nc, m, s):
                return None
            at += 1024
        # Pass 2: take, and build the held records (the inventory's name objects, the
        # shared core id objects).
        held = []
        at = n
        for k in range(n):
            p = placements[k]
            i = self._cores[k]
            nc = len(p[1])
            self._take_exact(i, self._cores + at, <int32_t> nc, p[2], p[3])
            held.append(wfm_placement(Placement, self._names[i], self._ints, self._cores + at,
                                      <int32_t> nc, p[2], p[3]))
            at += 1024
        self._held[name] = held
        return held
