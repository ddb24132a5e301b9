/*
 * Page filters of the kernel-table search (scanner/bigpages.py, scanner/tracker.py).
 *
 * Every page of a dump is asked whether it may be a page of PoolBigPageTable or of
 * PoolTrackTable. Nearly every page says no within its first few words, and numpy
 * cannot stop early per page: its calls cost more than the scan itself. These loops do
 * only the cheap rejections; the pages they let through are checked whole, entry by
 * entry, by the numpy code, which is also the fallback when this module is not built.
 * Both must give the same answers (tests/scanner/test_tables.py checks it).
 *
 * Buffers hold whole 4096-byte pages, little-endian (this module is only built where
 * the host is little-endian, like every Windows target it reads).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/random.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define PAGE 4096
#define QUICK_COUNT (1u << 29)
#define ZERO_STRIDE 256
#define CHUNK 256
#define MAX_ODD_HEAD 2  /* x86: odd words allowed in the first 64 bytes ... */
#define MAX_ODD 8       /* ... and in the whole page */

static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static inline int printable_tag(uint32_t v, int allow_protected)
{
    for (int i = 0; i < 4; i++) {
        uint32_t b = (v >> (8 * i)) & 0xFF;
        if (i == 3 && allow_protected)
            b &= 0x7F;
        if (b < 0x20 || b > 0x7E)
            return 0;
    }
    return 1;
}

/* All four bytes 0x20-0x7E, without branches (loops over pages vectorize): a byte
 * below 0x20 borrows into its top bit, one above 0x7E carries into it (the classic
 * "has less" / "has more" byte tests, exact for whether any byte qualifies). */
static inline uint32_t printable_word(uint32_t x)
{
    uint32_t below = (x - 0x20202020u) & ~x & 0x80808080u;
    uint32_t above = ((x + 0x01010101u) | x) & 0x80808080u;
    return !(below | above);
}

/* Two printable UTF-16LE characters (0x00XX00YY, XX and YY in 0x20-0x7E). */
static inline int utf16_pair(uint32_t w)
{
    uint32_t a = w & 0xFF, b = (w >> 16) & 0xFF;
    return (w & 0xFF00FF00u) == 0 && a >= 0x20 && a <= 0x7E && b >= 0x20 && b <= 0x7E;
}

/* A buffer of one byte per page of a window (flags the caller computed). */
static int get_flags(PyObject *obj, Py_ssize_t pages, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len != pages) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "one flag per page expected");
        return -1;
    }
    return 0;
}

static int get_pages(PyObject *obj, Py_buffer *view, Py_ssize_t *pages)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len % PAGE) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "buffer is not a whole number of pages");
        return -1;
    }
    *pages = view->len / PAGE;
    return 0;
}

/* The first `probe` whole entries at a phase start with a valid big-page table Va: the
 * never-used marker 1, or a page-aligned kernel address (bit 0 = freed). */
static int big_page(const uint8_t *page, int ptr, int size, int phase, int probe, uint64_t kmin)
{
    uint64_t top = ptr == 8 ? 0xFFFFFFFFFFFFF001ull : 0xFFFFF001ull;
    const uint8_t *at = page + phase;
    for (int i = 0; i < probe; i++, at += size) {
        uint64_t va = ptr == 8 ? rd64(at) : rd32(at);
        if (!(va == 1 || ((va & 0xFFE) == 0 && va >= kmin && va <= top)))
            return 0;
    }
    return 1;
}

/* Zero pages are common and pass every test of a tracker page but the last: whether
 * anything is in them. A page whose first 64 bytes are zero is sampled (one 8-byte word
 * every ZERO_STRIDE bytes) before it is read whole; an all-zero sample is taken for a
 * zero page. A tracker page escapes only when every one of its tags misses the sample:
 * each 40-byte entry holds a sampled word one time in five, so a page with a few dozen
 * tags (a real table is mostly full) is found all but surely. */
static int zero_sample(const uint8_t *page)
{
    for (int at = 0; at < PAGE; at += ZERO_STRIDE)
        if (rd64(page + at))
            return 0;
    return 1;
}

/* A page may be a tracker page: every 64-bit word's high half is small (x64), or every
 * 32-bit word is small or a printable tag, two in five at least small (x86); and it is
 * not all zero. */
static int tracker_page(const uint8_t *page, int wide)
{
    uint64_t head = 0;
    for (int i = 0; i < 64; i += 8)
        head |= rd64(page + i);
    if (!head && zero_sample(page))
        return 0;
    if (wide) {
        int small = 0;
        for (int i = 0; i < 8; i++) {  /* the first 64 bytes reject most pages */
            uint32_t hi = rd32(page + 8 * i + 4);
            if (hi >= QUICK_COUNT)
                return 0;
            small += hi < 1024;
        }
        if (small < 3)
            return 0;
        /* OR-reductions over CHUNK-byte pieces: loops the compiler vectorizes, with an
         * exit between chunks. The high half of a word is below QUICK_COUNT (2^29)
         * exactly when its top three bits are clear. */
        uint64_t any = 0;
        for (int c = 0; c < PAGE; c += CHUNK) {
            uint64_t acc = 0;
            for (int i = 0; i < CHUNK; i += 8)
                acc |= rd64(page + c + i);
            if (acc >> 61)
                return 0;
            any |= acc;
        }
        return any != 0;
    }
    /* A word that is neither small nor printable is an odd tag (a driver's binary tag)
     * or not a tracker page: a few odd tags are allowed. */
    int small = 0, odd = 0, utf16 = 0;
    for (int i = 0; i < 16; i++) {
        uint32_t w = rd32(page + 4 * i);
        if (w >= QUICK_COUNT && !printable_word(w) && ++odd > MAX_ODD_HEAD)
            return 0;  /* most pages stop here, within a few words */
        small += w < (1u << 24);
        utf16 += utf16_pair(w);
    }
    /* UTF-16 text reads as small numbers: two characters a word give it away. */
    if (odd > MAX_ODD_HEAD || small < 6 || utf16 >= 8)
        return 0;
    uint32_t any = 0;
    small = odd = 0;
    for (int c = 0; c < PAGE; c += CHUNK) {
        for (int i = 0; i < CHUNK; i += 4) {
            uint32_t w = rd32(page + c + i);
            odd += (w >= QUICK_COUNT) & !printable_word(w);
            small += w < (1u << 24);
            any |= w;
        }
        if (odd > MAX_ODD)
            return 0;
    }
    return any != 0 && 5 * small >= 2 * (PAGE / 4);
}

#define MAX_COMBOS 8
#define PREFETCH 16
/* The chain walk reads a page's headers one after the other, each position known only
 * from the one before: left alone, every link is a dependent miss to DRAM (~65 ns a
 * record measured). The whole page is asked for a few pages ahead instead, so the walk
 * finds its lines in the cache and the scan runs at the memory's bandwidth. */
#define AHEAD 4
static inline void prefetch_page(const uint8_t *page)
{
    for (int at = 0; at < PAGE; at += 64)
        __builtin_prefetch(page + at);
}

/* The (ptr_size, entry_size, phase, kernel_min) big-page readings to try. */
typedef struct {
    Py_ssize_t n;
    int probe, ptr[MAX_COMBOS], size[MAX_COMBOS], phase[MAX_COMBOS];
    unsigned long long kmin[MAX_COMBOS];
} combos_t;

static int parse_combos(PyObject *combos, int probe, combos_t *c)
{
    PyObject *seq = PySequence_Fast(combos, "combos must be a sequence");
    if (!seq)
        return -1;
    c->n = PySequence_Fast_GET_SIZE(seq);
    c->probe = probe;
    if (c->n > MAX_COMBOS || probe <= 0) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many entry layouts");
        return -1;
    }
    for (Py_ssize_t k = 0; k < c->n; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
        if (!PyArg_ParseTuple(item, "iiiK", &c->ptr[k], &c->size[k], &c->phase[k],
                              &c->kmin[k]) ||
            (c->ptr[k] != 4 && c->ptr[k] != 8) || c->size[k] <= 0 || c->phase[k] < 0 ||
            c->phase[k] + (Py_ssize_t)probe * c->size[k] > PAGE) {
            Py_DECREF(seq);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "bad entry geometry");
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* The table search's first look at one page: flag[0] bit k when big-page reading k fits
 * the page's first entries (big_page), flag[1] when it may hold tracker entries. */
static inline void probe_page(const uint8_t *page, const combos_t *c, int wide, uint8_t *flag)
{
    unsigned bits = 0;
    for (Py_ssize_t k = 0; k < c->n; k++)
        bits |= (unsigned)big_page(page, c->ptr[k], c->size[k], c->phase[k], c->probe,
                                   c->kmin[k]) << k;
    flag[0] = (uint8_t)bits;
    flag[1] = (uint8_t)tracker_page(page, wide);
}

/* (data, flags) for the functions that return both; NULL with an error set if either
 * could not be made. Takes the references it is given. */
static PyObject *pair(PyObject *data, PyObject *flags)
{
    PyObject *out = data && flags ? PyTuple_Pack(2, data, flags) : NULL;
    Py_XDECREF(data);
    Py_XDECREF(flags);
    return out;
}

/* probe_pages(buffer, wide, combos, probe, skip) -> bytes, two per page (zero for the
 * pages flagged in `skip`, one byte per page, which are not read):
 * [0] bit k set when big-page combo k = (ptr_size, entry_size, phase, kernel_min) holds
 *     for the page's first `probe` entries (big_page), [1] 1 when the page may hold
 *     tracker entries (tracker_page; `wide`: x64 layouts). One pass over the pages, so
 *     each page is visited (a TLB miss, a cache miss) once for both tables. */
static PyObject *probe_pages(PyObject *self, PyObject *args)
{
    PyObject *obj, *combos, *skip_obj;
    int wide, probe;
    if (!PyArg_ParseTuple(args, "OpOiO", &obj, &wide, &combos, &probe, &skip_obj))
        return NULL;
    combos_t c;
    if (parse_combos(combos, probe, &c) < 0)
        return NULL;
    Py_buffer view, skip;
    Py_ssize_t pages;
    if (get_pages(obj, &view, &pages) < 0)
        return NULL;
    if (get_flags(skip_obj, pages, &skip) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, pages * 2);
    if (out) {
        uint8_t *flag = (uint8_t *)PyBytes_AS_STRING(out);
        const uint8_t *buf = view.buf, *skipped = skip.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t p = 0; p < pages; p++) {
            const uint8_t *page = buf + p * PAGE;
            if (skipped[p]) {
                flag[2 * p] = flag[2 * p + 1] = 0;
                continue;
            }
            /* A page's first line is rarely cached (the scan before streamed past it)
             * and the next page's is not predicted: ask for it a few pages ahead. */
            if (p + PREFETCH < pages) {
                __builtin_prefetch(page + PREFETCH * PAGE);
                __builtin_prefetch(page + PREFETCH * PAGE + 64);
            }
            probe_page(page, &c, wide, flag + 2 * p);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&skip);
    PyBuffer_Release(&view);
    return out;
}

static inline uint64_t field(const uint8_t *p, int width) { return width == 8 ? rd64(p) : rd32(p); }

/* One tracker entry: 0 invalid, 1 empty, 2 a tag with consistent counters, 3 the same
 * with a printable tag (only those count as evidence). The rules of tracker.py's _Group. */
static int tracker_entry(const uint8_t *e, const int *f)
{
    int cw = f[0], bw = f[1], zero_at = f[8];
    uint32_t key = rd32(e);
    int zero = key == 0, ok = key != 0;
    for (int pool = 0; pool < 2; pool++) {
        uint64_t allocs = field(e + f[2 + 3 * pool], cw);
        uint64_t frees = field(e + f[3 + 3 * pool], cw);
        uint64_t bytes = field(e + f[4 + 3 * pool], bw);
        uint64_t live = allocs - (frees < allocs ? frees : allocs);
        ok = ok && allocs < (1ull << 32) && frees <= allocs && bytes < (1ull << 42) &&
             (live == 0 ? bytes == 0 : bytes >= live);
        zero = zero && allocs == 0 && frees == 0 && bytes == 0;
    }
    if (zero_at >= 0) {
        uint32_t pad = rd32(e + zero_at);
        ok = ok && pad == 0;
        zero = zero && pad == 0;
    }
    if (ok)
        return printable_tag(key, 0) ? 3 : 2;
    return zero ? 1 : 0;
}

/* tracker_phases(buffer, pages, size, step, cw, bw, np_a, np_f, np_b, p_a, p_f, p_b,
 *                zero_at, min_named) -> bytes
 * For each page flagged in `pages` (probe_pages' tracker flags): a little-endian 16-bit mask
 * of the phases (phase = bit * step) at which every whole entry is empty or a tag with
 * consistent counters and at least `min_named` tags are printable. The numpy side reads
 * and counts the entries of the few pages that pass. zero_at < 0: no padding. */
static PyObject *tracker_phases(PyObject *self, PyObject *args)
{
    PyObject *obj, *flags_obj;
    int size, step, min_named, f[9];
    if (!PyArg_ParseTuple(args, "OOiiiiiiiiiiii", &obj, &flags_obj, &size, &step, &f[0],
                          &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8], &min_named))
        return NULL;
    if (size <= 0 || size > 256 || step <= 0 || (f[0] != 4 && f[0] != 8) ||
        (f[1] != 4 && f[1] != 8)) {
        PyErr_SetString(PyExc_ValueError, "bad entry geometry");
        return NULL;
    }
    for (int i = 2; i < 9; i++) {
        int width = i == 8 ? 4 : ((i - 2) % 3 == 2 ? f[1] : f[0]);
        if ((i < 8 || f[i] >= 0) && (f[i] < 0 || f[i] + width > size)) {
            PyErr_SetString(PyExc_ValueError, "bad field offset");
            return NULL;
        }
    }
    Py_buffer view, flags;
    Py_ssize_t pages;
    if (get_pages(obj, &view, &pages) < 0)
        return NULL;
    if (get_flags(flags_obj, pages, &flags) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int phases = (PAGE % size) ? size / step : 1;
    if (phases > 16)
        phases = 16;
    PyObject *out = PyBytes_FromStringAndSize(NULL, pages * 2);
    if (out) {
        uint8_t *mask = (uint8_t *)PyBytes_AS_STRING(out);
        const uint8_t *buf = view.buf, *want = flags.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t p = 0; p < pages; p++) {
            unsigned bits = 0;
            for (int k = 0; k < phases && want[p]; k++) {
                int phase = k * step, named = 0, good = 1;
                for (int at = phase; at + size <= PAGE && good; at += size) {
                    int kind = tracker_entry(buf + p * PAGE + at, f);
                    good = kind != 0;
                    named += kind == 3;
                }
                if (good && named >= min_named)
                    bits |= 1u << k;
            }
            mask[2 * p] = (uint8_t)(bits & 0xFF);
            mask[2 * p + 1] = (uint8_t)(bits >> 8);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&flags);
    PyBuffer_Release(&view);
    return out;
}

/* A legacy header family: unit and the bit fields of header word 0. */
typedef struct {
    int unit;
    unsigned ps, pm, bs, bm, ts, tm, limit;
} chain_t;

static int check_chain(const chain_t *c)
{
    if ((c->unit != 8 && c->unit != 16) || c->ps > 31 || c->bs > 31 || c->ts > 31) {
        PyErr_SetString(PyExc_ValueError, "bad header layout");
        return -1;
    }
    return 0;
}

/* One record of pooltagscan.records.RECORD_DTYPE (packed, little-endian). */
#pragma pack(push, 1)
typedef struct {
    uint64_t offset;
    uint32_t tag, size;
    uint8_t pooltype, pool, state, confidence, protected_, family, source;
    uint64_t entry;
} record_t;
#pragma pack(pop)

enum { POOL_NONPAGED, POOL_PAGED, POOL_UNKNOWN };
enum { STATE_ALLOCATED, STATE_FREE };
enum { CONF_LOW, CONF_MEDIUM, CONF_HIGH };
#define MIN_PARTIAL_LINKS 3

/* Records are written straight into the bytearray that is returned, cut to length at the
 * end, not into a scratch buffer grown by realloc and copied out (5% of the scan). The bytearray is
 * sized from the records per page of the kernel's previous window, so consecutive
 * windows ask malloc for about the same size and get back the memory the last one
 * freed: a buffer grown and shrunk every window took fresh pages from the kernel,
 * 6,600 page faults a GiB on the segment heap (a fifth of its scan). A window with more
 * records grows it, with the GIL taken back. The estimate is only a size: sharing it
 * between threads is harmless. */
typedef struct {
    PyObject *array;
    record_t *rec;
    Py_ssize_t cap;
} records_t;

typedef struct {
    Py_ssize_t per_kpage;  /* records per 1024 pages of the last window */
} sizing_t;

static sizing_t legacy_sizing = {12 * 1024}, segment_sizing = {16 * 1024};

/* Room for a window of `pages`, plus `slack` records that a page may add before the
 * check for room. */
static int records_open(records_t *o, Py_ssize_t pages, Py_ssize_t slack, const sizing_t *s)
{
    Py_ssize_t cap = pages * s->per_kpage / 1024;
    o->cap = cap + cap / 16 + slack + 1024;
    o->array = PyByteArray_FromStringAndSize(NULL, o->cap * (Py_ssize_t)sizeof(record_t));
    o->rec = o->array ? (record_t *)PyByteArray_AS_STRING(o->array) : NULL;
    return o->array ? 0 : -1;
}

/* Room for `need` records in all; called without the GIL, which it takes for the resize. */
static int records_room(records_t *o, Py_ssize_t need)
{
    if (need <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap;
    while (cap < need)
        cap *= 2;
    PyGILState_STATE gil = PyGILState_Ensure();
    int failed = PyByteArray_Resize(o->array, cap * (Py_ssize_t)sizeof(record_t)) < 0;
    if (failed)
        PyErr_Clear();
    else {
        o->rec = (record_t *)PyByteArray_AS_STRING(o->array);
        o->cap = cap;
    }
    PyGILState_Release(gil);
    return failed ? -1 : 0;
}

/* The bytearray cut to `n` records (and the estimate updated), or NULL with MemoryError
 * when the scan failed. */
static PyObject *records_close(records_t *o, Py_ssize_t n, Py_ssize_t pages, int failed,
                               sizing_t *s)
{
    if (failed || PyByteArray_Resize(o->array, n * (Py_ssize_t)sizeof(record_t)) < 0) {
        Py_CLEAR(o->array);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    if (pages >= 256)  /* not from a page or two (`pool` views, detection's tiny dumps) */
        s->per_kpage = n * 1024 / pages;
    return o->array;
}

/* The 8 bytes at a record's `pooltype` field: pooltype, pool, state, confidence,
 * protected, family, source and the first byte of `entry` (0). Four wide stores write a
 * record instead of eleven narrow ones. */
#define MIDDLE(type, pool_state, conf, prot, family)                                      \
    ((uint64_t)(type) | (uint64_t)(pool_state) << 8 | (uint64_t)(conf) << 24 |            \
     (uint64_t)(prot) << 32 | (uint64_t)(family) << 40)
#define REC_OFFSET 0
#define REC_TAG 8
#define REC_MIDDLE 16
#define REC_CONF 19
#define REC_ENTRY 23

static inline void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* Walk one legacy page's chain (the rules of scanner/legacy.py, whose numpy walk is the
 * twin) and write its records at `out` as it goes, their confidence left
 * to the caller; -1 when the page does not start a chain, else the links written.
 * `decode[type]` is pool | state << 8 for every PoolType below the limit. The loop has one
 * branch a link: the tests are combined with `|`, and the tag tests are branch-free. */
static inline int legacy_page(const uint8_t *page, const chain_t *c, const uint16_t *decode,
                              uint64_t base, uint64_t family, uint8_t *out, int *complete,
                              int *good, int *mixed)
{
    uint32_t first = rd32(page);
    if (((first >> c->ps) & c->pm) != 0 || ((first >> c->bs) & c->bm) == 0 ||
        ((first >> c->ts) & c->tm) >= c->limit)
        return -1;
    const uint32_t units = PAGE / c->unit, unit = (uint32_t)c->unit;
    uint32_t pos = 0, last = 0, seen = 0;
    int links = 0, printable = 0;
    *complete = 0;
    for (;;) {
        uint32_t w0 = rd32(page + pos * unit);
        uint32_t prev = (w0 >> c->ps) & c->pm, block = (w0 >> c->bs) & c->bm;
        uint32_t type = (w0 >> c->ts) & c->tm;
        if ((prev != last) | (block == 0) | (type >= c->limit) | (pos + block > units))
            break;
        uint32_t tag = rd32(page + pos * unit + 4);
        uint32_t pw = printable_word(tag & 0x7FFFFFFFu);
        uint32_t prot = (tag >> 31) & pw;
        uint8_t *r = out + (size_t)links * sizeof(record_t);
        wr64(r + REC_OFFSET, base + (uint64_t)pos * unit);
        wr64(r + REC_TAG, (uint64_t)(tag & ~(prot << 31)) | (uint64_t)(block * unit) << 32);
        wr64(r + REC_MIDDLE, MIDDLE(type, decode[type], 0, prot, family));
        wr64(r + REC_ENTRY, 0);
        printable += (int)pw;
        /* bit 1: an even non-zero PoolType, bit 2: an odd one */
        seen |= (uint32_t)(type != 0) << (1 + (type & 1));
        links++;
        pos += block;
        if (pos == units) {
            *complete = 1;
            break;
        }
        last = block;
    }
    *good = printable;
    *mixed = seen == 6;
    return links;
}

/* legacy_records(buffer, address, unit, prev_shift, prev_mask, block_shift, block_mask,
 *                type_shift, type_mask, type_limit, xp, family, tables, wide, combos,
 *                probe) -> (records as a bytearray, flags)
 * `flags`: with `tables`, probe_pages' flags for the pages that are not proven pool
 * pages (a page with a high-confidence chain gets zeros), looked at in the same pass.
 * The legacy scanner whole (walk, confidence, decoding) for windows of contiguous pages
 * at `address`; scanner/pages.py's numpy code is the twin and the rules are written
 * there: a complete chain is high confidence when its page is consistent (one pool
 * class among non-zero PoolTypes, at least half the tags printable), else medium; a
 * broken chain keeps its links as low confidence when there are MIN_PARTIAL_LINKS of
 * them, all with printable tags. `xp`: the XP PoolType encoding, else Vista's. */
static PyObject *legacy_records(PyObject *self, PyObject *args)
{
    PyObject *obj, *combos;
    unsigned long long address;
    int xp, family, tables, wide, probe;
    chain_t c;
    combos_t cb;
    if (!PyArg_ParseTuple(args, "OKiIIIIIIIpippOi", &obj, &address, &c.unit, &c.ps, &c.pm,
                          &c.bs, &c.bm, &c.ts, &c.tm, &c.limit, &xp, &family, &tables, &wide,
                          &combos, &probe) ||
        check_chain(&c) < 0 || parse_combos(combos, probe, &cb) < 0)
        return NULL;
    if (c.limit > 256) {
        PyErr_SetString(PyExc_ValueError, "PoolType limit above 256");
        return NULL;
    }
    uint16_t decode[256];
    for (uint32_t type = 0; type < c.limit; type++) {
        unsigned pool, state;
        if (xp) {
            pool = type == 0 ? POOL_UNKNOWN : ((type & 1) ? POOL_NONPAGED : POOL_PAGED);
            state = type == 0 ? STATE_FREE : STATE_ALLOCATED;
        } else {
            pool = (type & 1) ? POOL_PAGED : POOL_NONPAGED;
            state = (type & 2) ? STATE_ALLOCATED : STATE_FREE;
        }
        decode[type] = (uint16_t)(pool | state << 8);
    }
    Py_buffer view;
    Py_ssize_t pages;
    if (get_pages(obj, &view, &pages) < 0)
        return NULL;
    PyObject *flags = PyBytes_FromStringAndSize(NULL, tables ? pages * 2 : 0);
    records_t o;
    int units = PAGE / c.unit;
    if (!flags || records_open(&o, pages, units, &legacy_sizing) < 0) {
        Py_XDECREF(flags);
        PyBuffer_Release(&view);
        return NULL;
    }
    uint8_t *flag = (uint8_t *)PyBytes_AS_STRING(flags);
    Py_ssize_t n = 0;
    int failed = 0;
    const uint8_t *buf = view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = 0; p < pages; p++) {
        const uint8_t *page = buf + p * PAGE;
        if (p + AHEAD < pages)
            prefetch_page(page + AHEAD * PAGE);
        if (records_room(&o, n + units) < 0) {
            failed = 1;
            break;
        }
        uint8_t *at = (uint8_t *)(o.rec + n);
        int complete, good, mixed;
        int links = legacy_page(page, &c, decode, address + (uint64_t)p * PAGE,
                                (uint64_t)family, at, &complete, &good, &mixed);
        uint8_t conf = CONF_LOW;
        int kept = 0;
        if (links > 0) {
            if (complete)
                conf = (!mixed && 2 * good >= links) ? CONF_HIGH : CONF_MEDIUM;
            /* a short or garbled broken chain keeps nothing */
            kept = complete || (links >= MIN_PARTIAL_LINKS && good == links);
        }
        /* The table search's first look, while the page is in the cache; a page proven
         * a pool page (a high-confidence chain) holds no kernel table and is skipped. */
        if (tables) {
            if (kept && conf == CONF_HIGH)
                flag[2 * p] = flag[2 * p + 1] = 0;
            else
                probe_page(page, &cb, wide, flag + 2 * p);
        }
        if (!kept)
            continue;
        if (conf != CONF_LOW)
            for (int i = 0; i < links; i++)
                at[(size_t)i * sizeof(record_t) + REC_CONF] = conf;
        n += links;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return pair(records_close(&o, n, pages, failed, &legacy_sizing), flags);
}

/* A sorted uint32 array holds `v` (the tag database's exact tags). */
static int known_tag(const uint32_t *known, Py_ssize_t n, uint32_t v)
{
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (known[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && known[lo] == v;
}

enum { STATE_UNKNOWN = 2 };
#define MAX_SLOTS (PAGE / 8)

/* A segment-heap header family: where candidates sit and how they link. */
typedef struct {
    int unit_words, unit, per_page;
    unsigned mask, value, bs, bm, ts, tm, max_block, vs_units;
} segment_t;

static int check_segment(const segment_t *g)
{
    if ((g->unit_words != 2 && g->unit_words != 4) || g->bs > 31 || g->ts > 31) {
        PyErr_SetString(PyExc_ValueError, "bad header layout");
        return -1;
    }
    return 0;
}

/* One page's candidates: candidate k sits at slot at[k]; index[slot] is k, or -1 (all -1
 * between pages: segment_reset puts back what segment_page set). */
typedef struct {
    int16_t index[MAX_SLOTS];
    int at[MAX_SLOTS];
    uint32_t blocks[MAX_SLOTS], tags[MAX_SLOTS], types[MAX_SLOTS];
    uint8_t lfh[MAX_SLOTS], vs_next[MAX_SLOTS], vs_prev[MAX_SLOTS];
} slots_t;

static void slots_init(slots_t *t)
{
    for (int i = 0; i < MAX_SLOTS; i++)
        t->index[i] = -1;
}

/* Bit i: slot i of the 64 at `at` has (w0 & mask) == value. Four slots a step with SSE2
 * (every x86-64 has it): whether a slot is a header cannot be predicted, and a branch
 * per slot was most of the segment-heap scan. */
static inline uint64_t match_mask(const uint8_t *at, int unit, uint32_t mask, uint32_t value)
{
    uint64_t bits = 0;
#if defined(__SSE2__)
    const __m128 m = _mm_castsi128_ps(_mm_set1_epi32((int)mask));
    const __m128i v = _mm_set1_epi32((int)value);
    for (int i = 0; i < 64; i += 4) {
        const uint8_t *p = at + (size_t)i * unit;
        __m128 w;
        if (unit == 16) {
            __m128 ab = _mm_shuffle_ps(_mm_loadu_ps((const float *)p),
                                       _mm_loadu_ps((const float *)(p + 16)), 0);
            __m128 cd = _mm_shuffle_ps(_mm_loadu_ps((const float *)(p + 32)),
                                       _mm_loadu_ps((const float *)(p + 48)), 0);
            w = _mm_shuffle_ps(ab, cd, _MM_SHUFFLE(2, 0, 2, 0));
        } else {
            w = _mm_shuffle_ps(_mm_loadu_ps((const float *)p),
                               _mm_loadu_ps((const float *)(p + 16)), _MM_SHUFFLE(2, 0, 2, 0));
        }
        __m128i hit = _mm_cmpeq_epi32(_mm_castps_si128(_mm_and_ps(w, m)), v);
        bits |= (uint64_t)_mm_movemask_ps(_mm_castsi128_ps(hit)) << i;
    }
#else
    for (int i = 0; i < 64; i++)
        bits |= (uint64_t)((rd32(at + (size_t)i * unit) & mask) == value) << i;
#endif
    return bits;
}

/* Find a page's candidates and link them (the rules above segment_records); returns how
 * many, and whether any is linked in `linked`. */
static int segment_page(const uint8_t *page, const segment_t *g, slots_t *t, int *linked)
{
    int count = 0;
    for (int base = 0; base < g->per_page; base += 64) {
        uint64_t bits = match_mask(page + (size_t)base * g->unit, g->unit, g->mask, g->value);
        for (; bits; bits &= bits - 1) {
            int i = base + __builtin_ctzll(bits);
            uint32_t w0 = rd32(page + i * g->unit);
            uint32_t block = (w0 >> g->bs) & g->bm, tag = rd32(page + i * g->unit + 4);
            if (block == 0 || block > g->max_block || !printable_tag(tag, 0))
                continue;
            t->index[i] = (int16_t)count;
            t->at[count] = i, t->blocks[count] = block, t->tags[count] = tag;
            t->types[count] = (w0 >> g->ts) & g->tm;
            t->lfh[count] = t->vs_next[count] = t->vs_prev[count] = 0;
            count++;
        }
    }
    int any = 0;
    for (int k = 0; k < count; k++) {
        uint32_t next = (uint32_t)t->at[k] + t->blocks[k];
        int n = next < (uint32_t)g->per_page ? t->index[next] : -1;
        if (n >= 0 && t->blocks[n] == t->blocks[k] && (t->types[n] & 1) == (t->types[k] & 1))
            t->lfh[k] = t->lfh[n] = any = 1;
        next += g->vs_units;
        n = next < (uint32_t)g->per_page ? t->index[next] : -1;
        if (n >= 0)
            t->vs_next[k] = t->vs_prev[n] = any = 1;
    }
    *linked = any;
    return count;
}

static void segment_reset(slots_t *t, int count)
{
    for (int k = 0; k < count; k++)
        t->index[t->at[k]] = -1;
}

#define SEGMENT_ARGS "iIIIIIIII"
#define SEGMENT_FIELDS(g)                                                                   \
    &(g).unit_words, &(g).mask, &(g).value, &(g).bs, &(g).bm, &(g).ts, &(g).tm,             \
        &(g).max_block, &(g).vs_units

static void segment_derive(segment_t *g)
{
    g->unit = g->unit_words * 4;
    g->per_page = PAGE / (g->unit ? g->unit : 16);
}

/* segment_records(buffer, address, unit_words, mask, value, block_shift, block_mask,
 *                 type_shift, type_mask, max_block, vs_units, xp, family, known, tables,
 *                 wide, combos, probe) -> (records as a bytearray, flags)
 * The segment-heap scanner whole (scanner/segment.py and pages._segment_records are the
 * numpy twin, where the rules are written) for a window of contiguous pages at
 * `address`, and with `tables` probe_pages' flags of every page in the same pass. A
 * candidate is a slot whose w0 has (w0 & mask) == value, a BlockSize in 1..max_block
 * and a printable tag; candidates link inside their page: LFH to the next block of the
 * same size and pool at +BlockSize, VS to a header at +BlockSize+vs_units. Linked is
 * high confidence, else a tag in `known` (sorted uint32) medium, else low; a VS chunk
 * reached from the one before and not LFH-linked is allocated, anything else unknown. */
static PyObject *segment_records(PyObject *self, PyObject *args)
{
    PyObject *obj, *known_obj, *combos;
    unsigned long long address;
    segment_t g;
    int xp, family, tables, wide, probe;
    if (!PyArg_ParseTuple(args, "OK" SEGMENT_ARGS "piOppOi", &obj, &address, SEGMENT_FIELDS(g),
                          &xp, &family, &known_obj, &tables, &wide, &combos, &probe) ||
        check_segment(&g) < 0)
        return NULL;
    segment_derive(&g);
    combos_t cb;
    if (parse_combos(combos, probe, &cb) < 0)
        return NULL;
    Py_buffer known;
    if (PyObject_GetBuffer(known_obj, &known, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (known.len % 4) {
        PyBuffer_Release(&known);
        PyErr_SetString(PyExc_ValueError, "known tags must be uint32");
        return NULL;
    }
    Py_buffer view;
    Py_ssize_t pages;
    if (get_pages(obj, &view, &pages) < 0) {
        PyBuffer_Release(&known);
        return NULL;
    }
    PyObject *flags = PyBytes_FromStringAndSize(NULL, tables ? pages * 2 : 0);
    slots_t *t = PyMem_RawMalloc(sizeof(slots_t));
    records_t o;
    if (!flags || !t || records_open(&o, pages, 0, &segment_sizing) < 0) {
        Py_XDECREF(flags);
        PyMem_RawFree(t);
        PyBuffer_Release(&view);
        PyBuffer_Release(&known);
        return t ? NULL : PyErr_NoMemory();
    }
    slots_init(t);
    Py_ssize_t n = 0, nknown = known.len / 4;
    int failed = 0;
    uint8_t *flag = (uint8_t *)PyBytes_AS_STRING(flags);
    const uint32_t *known_tags = known.buf;
    const uint8_t *buf = view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = 0; p < pages; p++) {
        const uint8_t *page = buf + p * PAGE;
        if (p + AHEAD < pages)
            prefetch_page(page + AHEAD * PAGE);
        if (tables)
            probe_page(page, &cb, wide, flag + 2 * p);
        int linked, count = segment_page(page, &g, t, &linked);
        if (!count)
            continue;
        segment_reset(t, count);
        if (records_room(&o, n + count) < 0) {
            failed = 1;
            break;
        }
        for (int k = 0; k < count; k++) {
            record_t *r = &o.rec[n++];
            uint32_t type = t->types[k];
            r->offset = address + ((uint64_t)p * g.per_page + (uint64_t)t->at[k]) * g.unit;
            r->tag = t->tags[k];
            r->size = t->blocks[k] * (uint32_t)g.unit;
            r->pooltype = (uint8_t)type;
            if (xp)
                r->pool = type == 0 ? POOL_UNKNOWN : ((type & 1) ? POOL_NONPAGED : POOL_PAGED);
            else
                r->pool = (type & 1) ? POOL_PAGED : POOL_NONPAGED;
            r->state = t->vs_prev[k] && !t->lfh[k] ? STATE_ALLOCATED : STATE_UNKNOWN;
            r->confidence = (t->lfh[k] || t->vs_next[k] || t->vs_prev[k]) ? CONF_HIGH
                            : known_tag(known_tags, nknown, t->tags[k])      ? CONF_MEDIUM
                                                                             : CONF_LOW;
            r->protected_ = 0;
            r->family = (uint8_t)family;
            r->source = 0;
            r->entry = 0;
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(t);
    PyBuffer_Release(&view);
    PyBuffer_Release(&known);
    return pair(records_close(&o, n, pages, failed, &segment_sizing), flags);
}

/* segment_evidence(buffer, unit_words, mask, value, block_shift, block_mask, type_shift,
 *                  type_mask, max_block, vs_units) -> pages
 * How many pages of a window hold a linked segment-heap header (high confidence in
 * segment_records): the family's evidence for detection (scanner/detect.py), without
 * building records. */
static PyObject *segment_evidence(PyObject *self, PyObject *args)
{
    PyObject *obj;
    segment_t g;
    if (!PyArg_ParseTuple(args, "O" SEGMENT_ARGS, &obj, SEGMENT_FIELDS(g)) ||
        check_segment(&g) < 0)
        return NULL;
    segment_derive(&g);
    Py_buffer view;
    Py_ssize_t pages, proven = 0;
    if (get_pages(obj, &view, &pages) < 0)
        return NULL;
    slots_t *t = PyMem_RawMalloc(sizeof(slots_t));
    if (!t) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    slots_init(t);
    const uint8_t *buf = view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = 0; p < pages; p++) {
        if (p + AHEAD < pages)
            prefetch_page(buf + (p + AHEAD) * PAGE);
        int linked, count = segment_page(buf + p * PAGE, &g, t, &linked);
        segment_reset(t, count);
        proven += linked;
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(t);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(proven);
}

/* legacy_evidence(buffer, unit, prev_shift, prev_mask, block_shift, block_mask,
 *                 type_shift, type_mask, type_limit) -> (pages, xp_votes, vista_votes)
 * Detection's evidence for a legacy family (scanner/legacy.py's complete_pages and
 * chain_votes are the numpy twin): pages whose chain is complete and consistent (high
 * confidence in legacy_records), and among them the pages that vote XP (PoolType low
 * bits 1 and no 2 or 3) and Vista (a 3). */
static PyObject *legacy_evidence(PyObject *self, PyObject *args)
{
    PyObject *obj;
    chain_t c;
    if (!PyArg_ParseTuple(args, "OiIIIIIII", &obj, &c.unit, &c.ps, &c.pm, &c.bs, &c.bm, &c.ts,
                          &c.tm, &c.limit) ||
        check_chain(&c) < 0)
        return NULL;
    if (c.limit > 256) {
        PyErr_SetString(PyExc_ValueError, "PoolType limit above 256");
        return NULL;
    }
    static const uint16_t decode[256];  /* pool and state are not needed here */
    Py_buffer view;
    Py_ssize_t pages, proven = 0, xp = 0, vista = 0;
    if (get_pages(obj, &view, &pages) < 0)
        return NULL;
    record_t *out = PyMem_RawMalloc((PAGE / 8) * sizeof(record_t));
    if (!out) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    const uint8_t *buf = view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = 0; p < pages; p++) {
        if (p + AHEAD < pages)
            prefetch_page(buf + (p + AHEAD) * PAGE);
        int complete, good, mixed;
        int links = legacy_page(buf + p * PAGE, &c, decode, 0, 0, (uint8_t *)out, &complete,
                                &good, &mixed);
        if (links <= 0 || !complete || mixed || 2 * good < links)
            continue;
        unsigned present = 0;
        for (int i = 0; i < links; i++)
            present |= 1u << (out[i].pooltype & 3);
        proven++;
        xp += (present & 0xE) == 0x2;
        vista += (present & 0x8) != 0;
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(out);
    PyBuffer_Release(&view);
    return Py_BuildValue("(nnn)", proven, xp, vista);
}

static const char PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* The text of v into the end of `end` (room for 20 characters before it): decimal, or
 * `0x` and lower-case hex; returns where it starts. Two decimal digits per division. */
static inline char *number_text(uint64_t v, int hex, char *end)
{
    char *at = end;
    if (hex) {
        do {
            unsigned d = (unsigned)(v & 15);
            *--at = (char)(d < 10 ? '0' + d : 'a' + d - 10);
            v >>= 4;
        } while (v);
        *--at = 'x';
        *--at = '0';
        return at;
    }
    while (v >= 100) {
        unsigned pair = (unsigned)(v % 100);
        v /= 100;
        at -= 2;
        memcpy(at, PAIRS + 2 * pair, 2);
    }
    if (v >= 10) {
        at -= 2;
        memcpy(at, PAIRS + 2 * v, 2);
    } else {
        *--at = (char)('0' + v);
    }
    return at;
}

#define NUMBER_ROOM 24

/* An offset's text into the end of `end` as the record joins write it: decimal, or `0x`
 * hex right-aligned in `width` columns (width <= NUMBER_ROOM); returns its length. */
static inline Py_ssize_t offset_text(uint64_t v, int hex, int width, char *end)
{
    Py_ssize_t len = end - number_text(v, hex, end);
    if (hex && len < width) {
        memset(end - width, ' ', width - len);
        len = width;
    }
    return len;
}

/* join_rows(offsets, rows, hex, width, lead, trim[, as_bytes]) -> str (bytes) or None
 * The text of a batch of record lines (render/records.py's LineBuilder): `lead`, then
 * for each record its offset (decimal, or `0x` hex right-aligned in `width` columns when
 * `hex`) followed by its row fragment (rows: a list of str, one per offset), the last
 * fragment shortened by `trim` characters. None when a fragment is not ASCII (a tag
 * file's words may not be): the caller joins in Python then. `as_bytes` gives the ASCII
 * text as bytes, for a stream that takes them without encoding a copy (a tenth of a
 * jsonl run went into that copy). The offsets are written
 * once into a scratch buffer while the text is measured, then copied: no Python object
 * per record. */
static PyObject *join_rows(PyObject *self, PyObject *args)
{
    PyObject *offsets_obj, *rows, *lead;
    int hex, width, as_bytes = 0;
    Py_ssize_t trim;
    if (!PyArg_ParseTuple(args, "OO!iiUn|p", &offsets_obj, &PyList_Type, &rows, &hex, &width,
                          &lead, &trim, &as_bytes))
        return NULL;
    if (width < 0 || width > NUMBER_ROOM || trim < 0) {
        PyErr_SetString(PyExc_ValueError, "bad width or trim");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(lead))
        Py_RETURN_NONE;
    Py_buffer view;
    if (PyObject_GetBuffer(offsets_obj, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    Py_ssize_t n = view.len / 8;
    if (view.len % 8 || PyList_GET_SIZE(rows) != n) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "offsets and rows do not match");
        return NULL;
    }
    const uint64_t *offsets = view.buf;
    char *scratch = PyMem_Malloc(n * NUMBER_ROOM + 1);
    uint8_t *sizes = PyMem_Malloc(n + 1);
    if (!scratch || !sizes) {
        PyMem_Free(scratch);
        PyMem_Free(sizes);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t total = PyUnicode_GET_LENGTH(lead);
    PyObject *out = NULL;
    int ascii = 1;
    for (Py_ssize_t i = 0; i < n && ascii; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        ascii = PyUnicode_Check(row) && PyUnicode_IS_ASCII(row);
        char *end = scratch + (i + 1) * NUMBER_ROOM;
        Py_ssize_t len = offset_text(offsets[i], hex, width, end);
        sizes[i] = (uint8_t)len;
        total += len + (ascii ? PyUnicode_GET_LENGTH(row) : 0);
    }
    if (ascii) {
        Py_ssize_t last = n ? PyUnicode_GET_LENGTH(PyList_GET_ITEM(rows, n - 1)) : 0;
        trim = trim < last ? trim : last;
        out = as_bytes ? PyBytes_FromStringAndSize(NULL, total - trim)
                       : PyUnicode_New(total - trim, 127);
    }
    if (out) {
        char *at = as_bytes ? PyBytes_AS_STRING(out) : (char *)PyUnicode_1BYTE_DATA(out);
        memcpy(at, PyUnicode_1BYTE_DATA(lead), PyUnicode_GET_LENGTH(lead));
        at += PyUnicode_GET_LENGTH(lead);
        for (Py_ssize_t i = 0; i < n; i++) {
            memcpy(at, scratch + (i + 1) * NUMBER_ROOM - sizes[i], sizes[i]);
            at += sizes[i];
            PyObject *row = PyList_GET_ITEM(rows, i);
            Py_ssize_t size = PyUnicode_GET_LENGTH(row) - (i == n - 1 ? trim : 0);
            memcpy(at, PyUnicode_1BYTE_DATA(row), size);
            at += size;
        }
    }
    PyMem_Free(scratch);
    PyMem_Free(sizes);
    PyBuffer_Release(&view);
    if (!ascii)
        Py_RETURN_NONE;
    return out;
}

/* The slot of `key` in a table of `cap` (a power of two, at least 2) slots:
 * multiply-shift hashing with a random odd multiplier chosen per process, a universal
 * family. The keys come from the dump (tags, sizes): a dump crafted to make them collide
 * must not turn a window's pass into a quadratic one. Results never depend on the
 * multiplier (they are sorted, or looked up by key). */
static uint64_t multiplier = 0x9E3779B97F4A7C15ull;

static inline size_t slot_of(uint64_t key, Py_ssize_t cap)
{
    return (size_t)((key * multiplier) >> (64 - __builtin_ctzll((unsigned long long)cap)));
}

/* An open-addressing hash table from uint64 keys to ids 0, 1, 2... in the order the
 * keys were first added, keeping the keys by id: unique_inverse, tag_class_sums and
 * fragment_ids number their distinct keys with it. Its load stays under a half. */
typedef struct { uint64_t key; int64_t id; } slot_t;  /* id + 1: 0 marks an empty slot */

typedef struct {
    slot_t *slots;
    uint64_t *keys;  /* by id; room for cap / 2 */
    Py_ssize_t cap, count;
} idtable_t;

/* Room for `want` keys before it grows; -1 when memory ran out (free it anyway). */
static int idtable_init(idtable_t *t, Py_ssize_t want)
{
    t->cap = 1024;
    while (t->cap < 2 * (want + 1))
        t->cap *= 2;
    t->count = 0;
    t->slots = PyMem_RawCalloc(t->cap, sizeof(slot_t));
    t->keys = PyMem_RawMalloc(t->cap / 2 * sizeof(uint64_t));
    return t->slots && t->keys ? 0 : -1;
}

static void idtable_free(idtable_t *t)
{
    PyMem_RawFree(t->slots);
    PyMem_RawFree(t->keys);
}

static inline size_t idtable_probe(const idtable_t *t, uint64_t key)
{
    size_t at = slot_of(key, t->cap);
    while (t->slots[at].id && t->slots[at].key != key)
        at = (at + 1) & (size_t)(t->cap - 1);
    return at;
}

/* The id of `key`, or -1 when it was never added. */
static inline int64_t idtable_get(const idtable_t *t, uint64_t key)
{
    return t->slots[idtable_probe(t, key)].id - 1;
}

/* The id of `key`, the next one when it is new; -1 when memory ran out. Called
 * without the GIL (PyMem_Raw*). */
static inline int64_t idtable_add(idtable_t *t, uint64_t key)
{
    size_t at = idtable_probe(t, key);
    if (t->slots[at].id)
        return t->slots[at].id - 1;
    if (2 * (t->count + 1) > t->cap) {  /* grow and rehash */
        Py_ssize_t grown = t->cap * 2;
        slot_t *bigger = PyMem_RawCalloc(grown, sizeof(slot_t));
        uint64_t *more = PyMem_RawRealloc(t->keys, grown / 2 * sizeof(uint64_t));
        if (more)
            t->keys = more;
        if (!bigger || !more) {
            PyMem_RawFree(bigger);
            return -1;
        }
        for (Py_ssize_t k = 0; k < t->count; k++) {
            size_t to = slot_of(t->keys[k], grown);
            while (bigger[to].id)
                to = (to + 1) & (size_t)(grown - 1);
            bigger[to].key = t->keys[k];
            bigger[to].id = k + 1;
        }
        PyMem_RawFree(t->slots);
        t->slots = bigger, t->cap = grown;
        at = idtable_probe(t, key);
    }
    t->slots[at].key = key;
    t->slots[at].id = t->count + 1;
    t->keys[t->count] = key;
    return t->count++;
}

/* Orders uint64 values, and records whose first member is their uint64 key. */
static int by_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The table's keys in order, each with its id, in a new array (NULL: no memory). */
static slot_t *idtable_sorted(const idtable_t *t)
{
    slot_t *order = PyMem_RawMalloc((t->count + 1) * sizeof(slot_t));
    if (!order)
        return NULL;
    for (Py_ssize_t k = 0; k < t->count; k++) {
        order[k].key = t->keys[k];
        order[k].id = k;
    }
    qsort(order, t->count, sizeof(slot_t), by_u64);
    return order;
}

/* unique_inverse(values) -> (distinct, inverse)
 * np.unique(values, return_inverse=True) for uint64 values (a contiguous buffer):
 * `distinct` the sorted distinct values (uint64 bytes), `inverse` each value's index
 * among them (int64 bytes). A window repeats a few dozen tags (or a few hundred record
 * combinations) tens of thousands of times: an open-addressing hash table finds the
 * distinct ones in one pass, and only they are sorted, where np.unique sorts them all. */
static PyObject *unique_inverse(PyObject *self, PyObject *args)
{
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "O", &obj))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (view.len % 8) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "values must be uint64");
        return NULL;
    }
    Py_ssize_t n = view.len / 8;
    const uint64_t *values = view.buf;
    idtable_t t;
    int64_t *ids = PyMem_RawMalloc((n + 1) * sizeof(int64_t));
    int64_t *rank = NULL;
    slot_t *order = NULL;
    int failed = idtable_init(&t, 0) < 0 || !ids;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && !failed; i++)
        failed = (ids[i] = idtable_add(&t, values[i])) < 0;
    if (!failed) {
        order = idtable_sorted(&t);
        rank = PyMem_RawMalloc((t.count + 1) * sizeof(int64_t));
        failed = !order || !rank;
    }
    if (!failed) {
        for (Py_ssize_t k = 0; k < t.count; k++) {
            rank[order[k].id] = k;
            t.keys[k] = order[k].key;  /* the sorted distinct values */
        }
        for (Py_ssize_t i = 0; i < n; i++)
            ids[i] = rank[ids[i]];
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *out = NULL;
    if (failed)
        PyErr_NoMemory();
    else
        out = Py_BuildValue("(y#y#)", (char *)t.keys, t.count * 8, (char *)ids, n * 8);
    idtable_free(&t);
    PyMem_RawFree(ids);
    PyMem_RawFree(rank);
    PyMem_RawFree(order);
    return out;
}

/* tag_class_sums(records, radix, source_page)
 *   -> (keys, blocks, sizes, pool_pages)
 * The `--stats` counters of one window in one pass, in place of a sort of its tags and
 * two bincounts (a third of a one-job `--stats` scan). Each record's class is its
 * (state, pool, source, confidence), each clamped to its radix, as stats._class_codes
 * has it; `keys` are the distinct (tag << 8 | class) values, sorted (uint64 bytes),
 * with each one's record count and summed sizes (int64 bytes). `pool_pages` counts the
 * distinct 4 KiB pages of the records whose source is `source_page` when they come in
 * address order (as a scan yields them), or is -1 when they do not. The records are
 * record_t, RECORD_DTYPE's layout (the caller checks the dtype). */
static PyObject *tag_class_sums(PyObject *self, PyObject *args)
{
    PyObject *obj;
    int r_state, r_pool, r_source, r_conf, source_page;
    if (!PyArg_ParseTuple(args, "O(iiii)i", &obj, &r_state, &r_pool, &r_source, &r_conf,
                          &source_page))
        return NULL;
    if (r_state < 1 || r_pool < 1 || r_source < 1 || r_conf < 1 ||
        r_state * r_pool * r_source * r_conf > 256) {
        PyErr_SetString(PyExc_ValueError, "bad class radix");
        return NULL;
    }
    const Py_ssize_t itemsize = (Py_ssize_t)sizeof(record_t);
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (view.len % itemsize) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the buffer is not a whole number of records");
        return NULL;
    }
    Py_ssize_t n = view.len / itemsize, pages = 0, room = 0;
    const uint8_t *base = view.buf;
    idtable_t t;
    int64_t *counts = NULL, *sizes = NULL;  /* by id */
    slot_t *order = NULL;
    int failed = idtable_init(&t, 0) < 0, sorted = 1;
    uint64_t last_page = 0;
    int any_page = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        const record_t *r = (const record_t *)(base + i * itemsize);
        int st = r->state, po = r->pool, so = r->source, co = r->confidence;
        st = st < r_state ? st : r_state - 1;
        po = po < r_pool ? po : r_pool - 1;
        int src = so < r_source ? so : r_source - 1;
        co = co < r_conf ? co : r_conf - 1;
        uint64_t code = (uint64_t)(((st * r_pool + po) * r_source + src) * r_conf + co);
        if (so == source_page) {
            uint64_t page = r->offset >> 12;
            if (!any_page || page != last_page) {
                if (any_page && page < last_page)
                    sorted = 0;
                pages++;
                last_page = page;
                any_page = 1;
            }
        }
        int64_t id = idtable_add(&t, ((uint64_t)r->tag << 8) | code);
        if (id < 0 || id >= room) {  /* the table failed, or grew: so do the sums */
            Py_ssize_t more = t.cap / 2;
            int64_t *c = PyMem_RawRealloc(counts, more * sizeof(int64_t));
            if (c)
                counts = c;
            int64_t *z = PyMem_RawRealloc(sizes, more * sizeof(int64_t));
            if (z)
                sizes = z;
            if (id < 0 || !c || !z) {
                failed = 1;
                break;
            }
            memset(counts + room, 0, (more - room) * sizeof(int64_t));
            memset(sizes + room, 0, (more - room) * sizeof(int64_t));
            room = more;
        }
        counts[id]++;
        sizes[id] += r->size;
    }
    if (!failed)
        failed = !(order = idtable_sorted(&t));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *out = NULL;
    if (failed)
        PyErr_NoMemory();
    else {
        Py_ssize_t count = t.count;
        PyObject *keys = PyBytes_FromStringAndSize(NULL, count * 8);
        PyObject *blocks = PyBytes_FromStringAndSize(NULL, count * 8);
        PyObject *bytes = PyBytes_FromStringAndSize(NULL, count * 8);
        if (keys && blocks && bytes) {
            uint64_t *k = (uint64_t *)PyBytes_AS_STRING(keys);
            int64_t *b = (int64_t *)PyBytes_AS_STRING(blocks);
            int64_t *z = (int64_t *)PyBytes_AS_STRING(bytes);
            for (Py_ssize_t j = 0; j < count; j++) {
                k[j] = order[j].key;
                b[j] = counts[order[j].id];
                z[j] = sizes[order[j].id];
            }
            out = Py_BuildValue("(OOOn)", keys, blocks, bytes, sorted ? pages : (Py_ssize_t)-1);
        }
        Py_XDECREF(keys);
        Py_XDECREF(blocks);
        Py_XDECREF(bytes);
    }
    idtable_free(&t);
    PyMem_RawFree(counts);
    PyMem_RawFree(sizes);
    PyMem_RawFree(order);
    return out;
}

/* fragment_ids(records, keys, radix) -> (ids, None) or (None, missing) or None
 * Which cached fragment each record's line takes (render/records.py's LineBuilder), in
 * one pass over the records: the packed key of a record (tag, protected bit, enums
 * code, size; as LineBuilder packs it) looked up among the cache's sorted `keys`
 * (uint64 buffer) through a hash table. `ids`: int32 bytes, one per record. When some
 * keys are not cached, `missing`: their distinct values, sorted (uint64 bytes), for the
 * caller to make and call again. None when a size does not fit the key's 23 bits, or
 * an enum is beyond its radix (no scan makes one; the caller's own way then). `radix`:
 * (pool, state, family, confidence, source) radices of the code. Replaces a numpy
 * packing, a hash of every key, a search and an object gather of every record's
 * fragment. */
static PyObject *fragment_ids(PyObject *self, PyObject *args)
{
    PyObject *records_obj, *keys_obj;
    int r[5];
    if (!PyArg_ParseTuple(args, "OO(iiiii)", &records_obj, &keys_obj, &r[0], &r[1], &r[2],
                          &r[3], &r[4]))
        return NULL;
    for (int i = 0; i < 5; i++)
        if (r[i] < 1 || r[i] > 256) {
            PyErr_SetString(PyExc_ValueError, "bad radix");
            return NULL;
        }
    if ((long)r[0] * r[1] * r[2] * r[3] * r[4] > 256) {
        PyErr_SetString(PyExc_ValueError, "the code must fit 8 bits");
        return NULL;
    }
    Py_buffer rec, keys;
    if (PyObject_GetBuffer(records_obj, &rec, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(keys_obj, &keys, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&rec);
        return NULL;
    }
    if (rec.len % (Py_ssize_t)sizeof(record_t) || keys.len % 8) {
        PyBuffer_Release(&rec);
        PyBuffer_Release(&keys);
        PyErr_SetString(PyExc_ValueError, "records or keys of the wrong size");
        return NULL;
    }
    Py_ssize_t n = rec.len / (Py_ssize_t)sizeof(record_t), known = keys.len / 8;
    const uint64_t *key_list = keys.buf;
    idtable_t table, missing;  /* the cached keys (id = index), the others met */
    int32_t *ids = PyMem_RawMalloc((n + 1) * sizeof(int32_t));
    int failed = idtable_init(&table, known) < 0;
    failed |= idtable_init(&missing, 0) < 0;  /* both made, so both can be freed */
    failed |= !ids || known > INT32_MAX;
    int too_big = 0, repeated = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < known && !failed && !repeated; k++) {
        int64_t id = idtable_add(&table, key_list[k]);
        failed = id < 0;
        repeated = id >= 0 && id != k;  /* a key twice: ids would not be indexes */
    }
    const record_t *recs = rec.buf;
    for (Py_ssize_t i = 0; i < n && !failed && !repeated; i++) {
        const record_t *q = &recs[i];
        if (q->size >= (1u << 23) || q->pool >= r[0] || q->state >= r[1] ||
            q->family >= r[2] || q->confidence >= r[3] || q->source >= r[4]) {
            too_big = 1;  /* not a key of the packing: the caller's own way */
            break;
        }
        uint64_t code = q->pool;
        code = code * (uint64_t)r[1] + q->state;
        code = code * (uint64_t)r[2] + q->family;
        code = code * (uint64_t)r[3] + q->confidence;
        code = code * (uint64_t)r[4] + q->source;
        uint64_t key = (uint64_t)q->tag | ((uint64_t)(q->protected_ != 0) << 32) |
                       (code << 33) | ((uint64_t)q->size << 41);
        int64_t id = idtable_get(&table, key);
        if (id < 0)
            failed = idtable_add(&missing, key) < 0;
        ids[i] = (int32_t)id;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&rec);
    PyBuffer_Release(&keys);
    PyObject *out = NULL;
    if (failed)
        PyErr_NoMemory();
    else if (repeated)
        PyErr_SetString(PyExc_ValueError, "the cached keys are not distinct");
    else if (too_big)
        Py_INCREF(Py_None), out = Py_None;
    else if (missing.count) {
        qsort(missing.keys, missing.count, sizeof(uint64_t), by_u64);
        out = Py_BuildValue("(Oy#)", Py_None, (char *)missing.keys, missing.count * 8);
    } else
        out = Py_BuildValue("(y#O)", (char *)ids, n * 4, Py_None);
    idtable_free(&table);
    idtable_free(&missing);
    PyMem_RawFree(ids);
    return out;
}

/* The bytes of a fragment: an ASCII str, or (only for bytes output) UTF-8 bytes. */
typedef struct { const char *data; Py_ssize_t size; } piece_t;

static int piece(PyObject *o, int as_bytes, piece_t *out)
{
    if (PyUnicode_Check(o) && PyUnicode_IS_ASCII(o)) {
        out->data = (const char *)PyUnicode_1BYTE_DATA(o);
        out->size = PyUnicode_GET_LENGTH(o);
        return 1;
    }
    if (as_bytes && PyBytes_Check(o)) {
        out->data = PyBytes_AS_STRING(o);
        out->size = PyBytes_GET_SIZE(o);
        return 1;
    }
    return 0;
}

/* fragment_pieces(fragments, as_bytes) -> pieces or None
 * The cached fragments (a list of str, bytes for bytes output, or (before, after)
 * pairs of them) checked and taken apart once for join_ids, which a window calls once
 * per chunk: checking every fragment on every call cost 0.06 ms a chunk, 0.5 ms with a
 * full cache. The pieces hold the list, so its items live as long as they do. None when
 * a fragment is none of these (the caller joins in Python then). */
typedef struct {
    PyObject *list;
    int as_bytes;
    Py_ssize_t count;
    piece_t pieces[];  /* two per fragment; the second's data NULL but for a pair */
} pieces_t;

#define PIECES_NAME "pooltagscan._tables.pieces"

static void pieces_free(PyObject *capsule)
{
    pieces_t *p = PyCapsule_GetPointer(capsule, PIECES_NAME);
    if (p) {
        Py_XDECREF(p->list);
        PyMem_Free(p);
    }
}

static PyObject *fragment_pieces(PyObject *self, PyObject *args)
{
    PyObject *frags;
    int as_bytes;
    if (!PyArg_ParseTuple(args, "O!p", &PyList_Type, &frags, &as_bytes))
        return NULL;
    Py_ssize_t nfrag = PyList_GET_SIZE(frags);
    pieces_t *p = PyMem_Malloc(sizeof(pieces_t) + (2 * nfrag + 1) * sizeof(piece_t));
    if (!p)
        return PyErr_NoMemory();
    p->list = NULL;
    p->as_bytes = as_bytes;
    p->count = nfrag;
    for (Py_ssize_t k = 0; k < nfrag; k++) {
        PyObject *f = PyList_GET_ITEM(frags, k);
        int ok;
        if (PyTuple_Check(f))
            ok = PyTuple_GET_SIZE(f) == 2 &&
                 piece(PyTuple_GET_ITEM(f, 0), as_bytes, &p->pieces[2 * k]) &&
                 piece(PyTuple_GET_ITEM(f, 1), as_bytes, &p->pieces[2 * k + 1]);
        else {
            ok = piece(f, as_bytes, &p->pieces[2 * k]);
            p->pieces[2 * k + 1].data = NULL;
            p->pieces[2 * k + 1].size = 0;
        }
        if (!ok) {
            PyMem_Free(p);
            Py_RETURN_NONE;
        }
    }
    PyObject *capsule = PyCapsule_New(p, PIECES_NAME, pieces_free);
    if (!capsule) {
        PyMem_Free(p);
        return NULL;
    }
    Py_INCREF(frags);
    p->list = frags;
    return capsule;
}

/* join_ids(records, ids, start, stop, pieces, hex, width, lead, trim) -> str/bytes or None
 * join_rows for the records [start, stop) whose fragments fragment_ids found: `lead`,
 * then each record's offset and fragments[ids[i]], a fragment or a (before, after) pair
 * between which the record's big-page table entry goes in decimal; the last fragment
 * shortened by `trim` (bytes). `pieces` are fragment_pieces' (bytes output if they were
 * made for it); `lead` is ASCII str or, for bytes output, bytes. None when it is
 * neither (the caller joins in Python then). No Python object is made or touched per
 * record, and the join runs without the GIL: the pieces' list and its immutable items
 * stay as they are while the caller waits, and scan threads go on beside it. */
static PyObject *join_ids(PyObject *self, PyObject *args)
{
    PyObject *records_obj, *ids_obj, *capsule, *lead_obj;
    Py_ssize_t start, stop, trim;
    int hex, width;
    if (!PyArg_ParseTuple(args, "OOnnOiiOn", &records_obj, &ids_obj, &start, &stop, &capsule,
                          &hex, &width, &lead_obj, &trim))
        return NULL;
    pieces_t *prepared = PyCapsule_GetPointer(capsule, PIECES_NAME);
    if (!prepared)
        return NULL;
    if (width < 0 || width > NUMBER_ROOM || trim < 0) {
        PyErr_SetString(PyExc_ValueError, "bad width or trim");
        return NULL;
    }
    int as_bytes = prepared->as_bytes;
    piece_t lead;
    if (!piece(lead_obj, as_bytes, &lead))
        Py_RETURN_NONE;
    Py_ssize_t nfrag = prepared->count;
    const piece_t *pieces = prepared->pieces;
    Py_buffer rec, idv;
    if (PyObject_GetBuffer(records_obj, &rec, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(ids_obj, &idv, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&rec);
        return NULL;
    }
    Py_ssize_t n = rec.len / (Py_ssize_t)sizeof(record_t), rows = stop - start;
    const record_t *recs = rec.buf;
    const int32_t *ids = idv.buf;
    char *scratch = NULL;
    uint8_t *sizes = NULL;
    PyObject *out = NULL;
    if (rec.len % (Py_ssize_t)sizeof(record_t) || idv.len != n * 4 || start < 0 || stop > n ||
        start > stop) {
        PyErr_SetString(PyExc_ValueError, "records, ids and range do not match");
        goto done;
    }
    /* Each offset's text (and a big-pool entry's) is written once into scratch while
     * the line is measured, then copied. */
    scratch = PyMem_Malloc(2 * rows * NUMBER_ROOM + 1);
    sizes = PyMem_Malloc(2 * rows + 1);
    if (!scratch || !sizes) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = lead.size, last = 0;
    int bad = 0;
    PyThreadState *unlocked = PyEval_SaveThread();
    for (Py_ssize_t j = 0; j < rows; j++) {  /* measure, and check every id */
        Py_ssize_t i = start + j;
        int32_t id = ids[i];
        if (id < 0 || id >= nfrag) {
            bad = 1;
            break;
        }
        char *end = scratch + (2 * j + 1) * NUMBER_ROOM;
        Py_ssize_t len = offset_text(recs[i].offset, hex, width, end);
        sizes[2 * j] = (uint8_t)len;
        const piece_t *a = &pieces[2 * id], *b = a + 1;
        if (b->data) {  /* a pair: before, entry, after */
            char *more = scratch + (2 * j + 2) * NUMBER_ROOM;
            Py_ssize_t elen = more - number_text(recs[i].entry, 0, more);
            sizes[2 * j + 1] = (uint8_t)elen;
            total += len + a->size + elen;
            last = b->size;
        } else {
            total += len;
            last = a->size;
        }
        total += last;
    }
    PyEval_RestoreThread(unlocked);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "a fragment id out of range");
        goto done;
    }
    trim = rows ? (trim < last ? trim : last) : 0;
    out = as_bytes ? PyBytes_FromStringAndSize(NULL, total - trim)
                   : PyUnicode_New(total - trim, 127);
    if (out) {
        char *at = as_bytes ? PyBytes_AS_STRING(out) : (char *)PyUnicode_1BYTE_DATA(out);
        unlocked = PyEval_SaveThread();
        memcpy(at, lead.data, lead.size);
        at += lead.size;
        for (Py_ssize_t j = 0; j < rows; j++) {
            Py_ssize_t i = start + j;
            memcpy(at, scratch + (2 * j + 1) * NUMBER_ROOM - sizes[2 * j], sizes[2 * j]);
            at += sizes[2 * j];
            const piece_t *a = &pieces[2 * ids[i]], *tail = a;
            if (a[1].data) {
                memcpy(at, a->data, a->size);
                at += a->size;
                uint8_t elen = sizes[2 * j + 1];
                memcpy(at, scratch + (2 * j + 2) * NUMBER_ROOM - elen, elen);
                at += elen;
                tail = a + 1;
            }
            Py_ssize_t size = tail->size - (j == rows - 1 ? trim : 0);
            memcpy(at, tail->data, size);
            at += size;
        }
        PyEval_RestoreThread(unlocked);
    }
done:
    PyMem_Free(scratch);
    PyMem_Free(sizes);
    PyBuffer_Release(&rec);
    PyBuffer_Release(&idv);
    return out;
}

static PyMethodDef methods[] = {
    {"probe_pages", probe_pages, METH_VARARGS,
     "Per page: which big-page table layouts its first entries fit, and whether it may "
     "hold pool tracker table entries."},
    {"segment_records", segment_records, METH_VARARGS,
     "The segment-heap scanner's records of a window of contiguous pages."},
    {"tag_class_sums", tag_class_sums, METH_VARARGS,
     "The --stats counters of a window: per (tag, class) record counts and size sums."},
    {"unique_inverse", unique_inverse, METH_VARARGS,
     "np.unique(values, return_inverse=True) of uint64 values, by a hash table."},
    {"fragment_ids", fragment_ids, METH_VARARGS,
     "Which cached line fragment each record takes, or the keys not cached yet."},
    {"fragment_pieces", fragment_pieces, METH_VARARGS,
     "The cached line fragments, checked and taken apart once for join_ids."},
    {"join_ids", join_ids, METH_VARARGS,
     "The text of a range of records from their offsets and fragment ids."},
    {"join_rows", join_rows, METH_VARARGS,
     "The text of a batch of record lines: offsets interleaved with row fragments."},
    {"legacy_records", legacy_records, METH_VARARGS,
     "The legacy scanner's records of a window of contiguous pages."},
    {"legacy_evidence", legacy_evidence, METH_VARARGS,
     "Detection's evidence for a legacy family: proving pages and encoding votes."},
    {"segment_evidence", segment_evidence, METH_VARARGS,
     "Detection's evidence for a segment-heap family: pages with linked headers."},
    {"tracker_phases", tracker_phases, METH_VARARGS,
     "Per candidate page, the phases at which it is a whole tracker table page."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_tables", "Page filters of the kernel-table search.", -1, methods,
};

PyMODINIT_FUNC PyInit__tables(void)
{
    uint64_t seed = 0;
#if defined(__linux__)
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
#endif
        seed = (uint64_t)(uintptr_t)&seed ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
    multiplier = (seed * 0x9E3779B97F4A7C15ull) | 1;
    return PyModule_Create(&module);
}
