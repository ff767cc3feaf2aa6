/*
 * Native chunk-boundary scanner for zconv (our own code; the rules are the
 * reference writer's, see converter/chunked/chunker.py for the full story).
 *
 * scan(data, state) -> (cuts, state)
 *   state = (s1, s2, wofs, window: bytes[64], zero_run, pos, pending: tuple)
 *   cuts  = list of (end_offset, is_zeros)
 *
 * Every byte is rolled in as it comes, zeros included (the reference rolls
 * the zeros of a hole too, only without testing for a split). What the
 * zeros change is which splits count:
 *   - inside a run of zeros that is still shorter than 1024 bytes, a split
 *     is held in `pending`: if the run ends short it was ordinary data and
 *     the splits stand; if the run reaches 1024 it is a hole and they go;
 *   - when a run reaches 1024 bytes the data chunk ends where the run
 *     started; when it ends, a `zeros` chunk ends there; no split is
 *     tested inside.
 * That is exactly the reference's holes finder, which looks ahead over a
 * zero run before handing it to the rolling checksum. The common case (no
 * split, no run ending with something to report) costs one well-predicted
 * branch per byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <string.h>

#define WINDOW 64
#define CHAR_OFFSET 31
#define THRESHOLD 1024
#define MASK 0xFFFFu

typedef struct {
    uint32_t s1, s2;
    unsigned wofs;
    uint8_t window[WINDOW];
    unsigned long long zero_run;
    unsigned long long pos;
    unsigned long long pending[THRESHOLD];
    Py_ssize_t npending;
    /* Cuts found, kept in C memory so the scan can run without the GIL. */
    unsigned long long *cut_end;
    unsigned char *cut_zeros;
    Py_ssize_t ncuts, cap;
    int failed;
} state_t;

static void emit(state_t *st, unsigned long long end, int zeros) {
    if (st->failed) return;
    if (st->ncuts == st->cap) {
        Py_ssize_t cap = st->cap ? st->cap * 2 : 64;
        unsigned long long *e = realloc(st->cut_end, cap * sizeof *e);
        if (e) st->cut_end = e;
        unsigned char *z = realloc(st->cut_zeros, cap);
        if (z) st->cut_zeros = z;
        if (!e || !z) {
            st->failed = 1;
            return;
        }
        st->cap = cap;
    }
    st->cut_end[st->ncuts] = end;
    st->cut_zeros[st->ncuts++] = (unsigned char)zeros;
}

static void flush_pending(state_t *st) {
    for (Py_ssize_t k = 0; k < st->npending; k++) emit(st, st->pending[k], 0);
    st->npending = 0;
}

static state_t *state_new(void) {
    state_t *st = PyMem_Malloc(sizeof(state_t));
    if (!st) {
        PyErr_NoMemory();
        return NULL;
    }
    st->cut_end = NULL;
    st->cut_zeros = NULL;
    st->ncuts = st->cap = 0;
    st->failed = 0;
    return st;
}

static void state_free(state_t *st) {
    free(st->cut_end);
    free(st->cut_zeros);
    PyMem_Free(st);
}

static void state_init(state_t *st) {
    st->s1 = WINDOW * CHAR_OFFSET;
    st->s2 = WINDOW * (WINDOW - 1) * CHAR_OFFSET;
    st->wofs = 0;
    memset(st->window, 0, WINDOW);
    st->zero_run = 0;
    st->pos = 0;
    st->npending = 0;
}

static int parse_state(PyObject *o, state_t *st) {
    PyObject *win, *pend;
    unsigned int s1, s2, wofs;
    if (!PyArg_ParseTuple(o, "IIISKKO!", &s1, &s2, &wofs, &win, &st->zero_run, &st->pos, &PyTuple_Type, &pend))
        return -1;
    if (PyBytes_GET_SIZE(win) != WINDOW || PyTuple_GET_SIZE(pend) >= THRESHOLD) {
        PyErr_SetString(PyExc_ValueError, "bad scanner state");
        return -1;
    }
    st->s1 = s1;
    st->s2 = s2;
    st->wofs = wofs & (WINDOW - 1);
    memcpy(st->window, PyBytes_AS_STRING(win), WINDOW);
    st->npending = PyTuple_GET_SIZE(pend);
    for (Py_ssize_t k = 0; k < st->npending; k++) {
        st->pending[k] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(pend, k));
        if (PyErr_Occurred()) return -1;
    }
    return 0;
}

static PyObject *cuts_list(state_t *st) {
    if (st->failed) return PyErr_NoMemory();
    PyObject *cuts = PyList_New(st->ncuts);
    if (!cuts) return NULL;
    for (Py_ssize_t k = 0; k < st->ncuts; k++) {
        PyObject *t = Py_BuildValue("(KO)", st->cut_end[k], st->cut_zeros[k] ? Py_True : Py_False);
        if (!t) {
            Py_DECREF(cuts);
            return NULL;
        }
        PyList_SET_ITEM(cuts, k, t);
    }
    return cuts;
}

static PyObject *build_result(state_t *st) {
    PyObject *pend = NULL, *state = NULL, *res = NULL, *cuts = cuts_list(st);
    if (!cuts) goto out;
    pend = PyTuple_New(st->npending);
    if (!pend) goto out;
    for (Py_ssize_t k = 0; k < st->npending; k++) {
        PyObject *v = PyLong_FromUnsignedLongLong(st->pending[k]);
        if (!v) goto out;
        PyTuple_SET_ITEM(pend, k, v);
    }
    state = Py_BuildValue("(IIIy#KKO)", st->s1, st->s2, st->wofs, (const char *)st->window, (Py_ssize_t)WINDOW,
                          st->zero_run, st->pos, pend);
    if (!state) goto out;
    res = PyTuple_Pack(2, cuts, state);
out:
    Py_XDECREF(cuts);
    Py_XDECREF(pend);
    Py_XDECREF(state);
    return res;
}

/* Roll one byte in; returns nonzero when something may have to be reported. */
#define ROLL(c, drop)                                                                              \
    do {                                                                                           \
        s1 += (uint32_t)(c) - (drop);                                                              \
        s2 += s1 - (uint32_t)WINDOW * ((uint32_t)(drop) + CHAR_OFFSET);                            \
    } while (0)

/* The scan proper: touches no Python object, so it runs without the GIL. */
static void scan_core(state_t *st, const uint8_t *p, const Py_ssize_t n) {
    const unsigned long long base = st->pos;
    uint32_t s1 = st->s1, s2 = st->s2;
    unsigned long long z = st->zero_run;
    uint8_t *win = st->window;
    const unsigned wofs0 = st->wofs;
    /* The byte leaving the window: from the saved window for the first 64
     * bytes of the block, from the block itself after that (two loops, so
     * the hot one has no test for it). */
#define STEP(DROP)                                                                                          \
    {                                                                                                       \
        const uint8_t c = p[i];                                                                             \
        const uint8_t drop = (DROP);                                                                        \
        ROLL(c, drop);                                                                                      \
        const unsigned long long zprev = z;                                                                 \
        z = c ? 0 : z + 1;                                                                                  \
        const int split = (s2 & MASK) == MASK;                                                              \
        if (__builtin_expect(split | (z >= THRESHOLD) | ((c != 0) & ((zprev >= THRESHOLD) | (st->npending != 0))), 0)) { \
            const unsigned long long q = base + (unsigned long long)i;                                      \
            if (c) {                                                                                        \
                if (zprev >= THRESHOLD) emit(st, q, 1); /* the hole ends here */                            \
                else flush_pending(st);                  /* a short run: its splits stand */                \
                if (split) emit(st, q + 1, 0);                                                              \
            } else if (z == THRESHOLD) {                                                                    \
                st->npending = 0;                        /* the run is a hole after all */                  \
                emit(st, q + 1 - THRESHOLD, 0);          /* the data chunk ends where it starts */          \
            } else if (z < THRESHOLD) {                                                                     \
                st->pending[st->npending++] = q + 1;     /* decided when the run ends */                    \
            }                                                                                               \
            if (z >= THRESHOLD) {                                                                           \
                /* Deep in a hole the last 64 bytes (the window) are zeros, so s1 and                       \
                 * s2 stay put: skip the rest of the run. */                                                \
                Py_ssize_t j = i + 1;                                                                       \
                while (j < n && p[j] == 0) j++;                                                             \
                z += (unsigned long long)(j - i - 1);                                                       \
                i = j - 1;                                                                                  \
            }                                                                                               \
        }                                                                                                   \
    }
    Py_ssize_t i = 0;
    const Py_ssize_t head = n < WINDOW ? n : WINDOW;
    for (; i < head; i++) STEP(win[(wofs0 + (unsigned)i) & (WINDOW - 1)])
#ifdef __SSE2__
    /* Eight bytes at a time while nothing can happen but rolling: only the
     * low 16 bits of s1 and s2 decide a split, so they are computed for
     * eight positions at once in 16-bit lanes (two prefix sums); when no
     * lane splits, no zero run can reach the hole threshold and nothing is
     * pending, the group only moves s1, s2 and the zero-run length. Any
     * other group goes through STEP byte by byte. */
    const __m128i zero = _mm_setzero_si128(), ones = _mm_set1_epi16(-1), k31 = _mm_set1_epi16(CHAR_OFFSET);
    while (i < n) {
        if (i + 8 <= n && z < THRESHOLD - 8 && st->npending == 0) {
            const __m128i c8 = _mm_loadl_epi64((const __m128i *)(p + i));
            const __m128i c = _mm_unpacklo_epi8(c8, zero);
            const __m128i d = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(p + i - WINDOW)), zero);
            __m128i e = _mm_sub_epi16(c, d);
            e = _mm_add_epi16(e, _mm_slli_si128(e, 2));
            e = _mm_add_epi16(e, _mm_slli_si128(e, 4));
            e = _mm_add_epi16(e, _mm_slli_si128(e, 8));
            const __m128i v1 = _mm_add_epi16(e, _mm_set1_epi16((short)s1));
            __m128i t = _mm_sub_epi16(v1, _mm_slli_epi16(_mm_add_epi16(d, k31), 6));
            t = _mm_add_epi16(t, _mm_slli_si128(t, 2));
            t = _mm_add_epi16(t, _mm_slli_si128(t, 4));
            t = _mm_add_epi16(t, _mm_slli_si128(t, 8));
            const __m128i v2 = _mm_add_epi16(t, _mm_set1_epi16((short)s2));
            if (!_mm_movemask_epi8(_mm_cmpeq_epi16(v2, ones))) {
                const unsigned zm = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(c8, zero)) & 0xFFu;
                s1 = (uint32_t)_mm_extract_epi16(v1, 7);
                s2 = (uint32_t)_mm_extract_epi16(v2, 7);
                z = zm == 0xFFu ? z + 8 : (unsigned long long)(__builtin_clz(~zm & 0xFFu) - 24);
                i += 8;
                continue;
            }
        }
        STEP(p[i - WINDOW])
        i++;
    }
#else
    for (; i < n; i++) STEP(p[i - WINDOW])
#endif
#undef STEP
    /* The new window: the last 64 bytes rolled in, oldest first at wofs. */
    uint8_t nw[WINDOW];
    for (unsigned k = 0; k < WINDOW; k++) {
        /* byte that entered at relative position n - WINDOW + k */
        const Py_ssize_t r = n - WINDOW + (Py_ssize_t)k;
        nw[(wofs0 + (unsigned)n + k) & (WINDOW - 1)] = r >= 0 ? p[r] : win[(wofs0 + (unsigned)(n + WINDOW) + k) & (WINDOW - 1)];
    }
    memcpy(win, nw, WINDOW);
    st->s1 = s1;
    st->s2 = s2;
    st->wofs = (unsigned)((wofs0 + (unsigned long long)n) & (WINDOW - 1));
    st->zero_run = z;
    st->pos = base + (unsigned long long)n;
}

static void finish_core(state_t *st) {
    if (st->zero_run >= THRESHOLD) emit(st, st->pos, 1);
    else flush_pending(st);
    st->zero_run = 0;
}

/* Blocks at least this long are scanned with the GIL released. */
#define NOGIL_MIN 8192

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *stobj;
    if (!PyArg_ParseTuple(args, "y*O", &buf, &stobj)) return NULL;
    state_t *st = state_new();
    if (!st || parse_state(stobj, st) < 0) {
        PyBuffer_Release(&buf);
        if (st) state_free(st);
        return NULL;
    }
    if (buf.len >= NOGIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        scan_core(st, (const uint8_t *)buf.buf, buf.len);
        Py_END_ALLOW_THREADS
    } else {
        scan_core(st, (const uint8_t *)buf.buf, buf.len);
    }
    PyBuffer_Release(&buf);
    PyObject *res = build_result(st);
    state_free(st);
    return res;
}

static PyObject *finish(PyObject *self, PyObject *args) {
    PyObject *stobj;
    if (!PyArg_ParseTuple(args, "O", &stobj)) return NULL;
    state_t *st = state_new();
    if (!st || parse_state(stobj, st) < 0) {
        if (st) state_free(st);
        return NULL;
    }
    finish_core(st);
    PyObject *res = build_result(st);
    state_free(st);
    return res;
}

/* chunks(data) -> [(offset, size, is_zeros)]: every chunk of one whole
 * payload (a fresh scan, then finish), empty chunks dropped; the same as
 * chunker.chunk_boundaries for a payload that is at hand in one piece. */
static PyObject *chunks(PyObject *self, PyObject *args) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    state_t *st = state_new();
    if (!st) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    state_init(st);
    if (buf.len >= NOGIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        scan_core(st, (const uint8_t *)buf.buf, buf.len);
        finish_core(st);
        Py_END_ALLOW_THREADS
    } else {
        scan_core(st, (const uint8_t *)buf.buf, buf.len);
        finish_core(st);
    }
    emit(st, (unsigned long long)buf.len, 0);
    PyBuffer_Release(&buf);
    PyObject *out = NULL;
    if (st->failed) {
        PyErr_NoMemory();
        goto done;
    }
    out = PyList_New(0);
    if (!out) goto done;
    unsigned long long start = 0;
    for (Py_ssize_t k = 0; k < st->ncuts; k++) {
        const unsigned long long end = st->cut_end[k];
        if (end <= start) continue;
        PyObject *t = Py_BuildValue("(KKO)", start, end - start, st->cut_zeros[k] ? Py_True : Py_False);
        if (!t || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(t);
        start = end;
    }
done:
    state_free(st);
    return out;
}

/* ---- tar headers ----------------------------------------------------
 * parse_header(block) -> tuple | None: the fields of one 512-byte USTAR or
 * GNU header block, parsed as converter/chunked/tarstream.py's
 * parse_header_block does, for the common case only: a valid checksum,
 * octal numbers, USTAR (not star) or GNU without atime/ctime, and not an
 * old GNU sparse entry. Anything else returns None and the caller takes
 * the Python road, which also says what is wrong.
 * Tuple: (typeflag, name, linkname, size, mode, uid, gid, mtime seconds,
 *         devmajor, devminor)
 */

/* Go's parseOctal after trimming spaces and NULs; -1 when not the plain case. */
static long long octal_field(const uint8_t *b, int n) {
    int lo = 0, hi = n;
    while (lo < hi && (b[lo] == ' ' || b[lo] == 0)) lo++;
    while (hi > lo && (b[hi - 1] == ' ' || b[hi - 1] == 0)) hi--;
    for (int k = lo; k < hi; k++)
        if (b[k] == 0) {
            hi = k;
            break;
        }
    unsigned long long v = 0;
    for (int k = lo; k < hi; k++) {
        if (b[k] < '0' || b[k] > '7') return -1;
        if (v >> 58) return -1; /* large: let Python decide */
        v = (v << 3) | (unsigned)(b[k] - '0');
    }
    return (long long)v;
}

static long long numeric_field(const uint8_t *b, int n) {
    if (b[0] & 0x80) return -1; /* base-256 */
    return octal_field(b, n);
}

static Py_ssize_t cstr_len(const uint8_t *b, Py_ssize_t n) {
    const uint8_t *z = memchr(b, 0, (size_t)n);
    return z ? z - b : n;
}

static PyObject *parse_header(PyObject *self, PyObject *args) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    PyObject *res = NULL;
    const uint8_t *b = (const uint8_t *)buf.buf;
    if (buf.len != 512) goto fallback;
    long long stored = octal_field(b + 148, 8);
    if (stored < 0) goto fallback;
    long long usum = 0, ssum = 0;
    for (int k = 0; k < 512; k++) {
        const uint8_t c = (k >= 148 && k < 156) ? ' ' : b[k];
        usum += c;
        ssum += (int8_t)c;
    }
    if (stored != usum && stored != ssum) goto fallback;
    const int ustar = memcmp(b + 257, "ustar\0", 6) == 0;
    const int gnu = memcmp(b + 257, "ustar ", 6) == 0 && memcmp(b + 263, " \0", 2) == 0;
    if (ustar && memcmp(b + 508, "tar\0", 4) == 0) goto fallback; /* star */
    if (!ustar && !gnu) goto fallback;                          /* v7 */
    if (gnu && (b[345] != 0 || b[357] != 0 || b[156] == 'S')) goto fallback;
    long long size = numeric_field(b + 124, 12), mode = numeric_field(b + 100, 8);
    long long uid = numeric_field(b + 108, 8), gid = numeric_field(b + 116, 8);
    long long mtime = numeric_field(b + 136, 12);
    long long dmaj = numeric_field(b + 329, 8), dmin = numeric_field(b + 337, 8);
    if ((size | mode | uid | gid | mtime | dmaj | dmin) < 0) goto fallback;
    const Py_ssize_t nlen = cstr_len(b, 100), llen = cstr_len(b + 157, 100);
    const Py_ssize_t plen = ustar ? cstr_len(b + 345, 155) : 0;
    PyObject *name;
    if (plen) {
        name = PyBytes_FromStringAndSize(NULL, plen + 1 + nlen);
        if (name) {
            char *d = PyBytes_AS_STRING(name);
            memcpy(d, b + 345, (size_t)plen);
            d[plen] = '/';
            memcpy(d + plen + 1, b, (size_t)nlen);
        }
    } else {
        name = PyBytes_FromStringAndSize((const char *)b, nlen);
    }
    if (!name) goto out;
    res = Py_BuildValue("(y#Ny#LLLLLLL)", (const char *)b + 156, (Py_ssize_t)1, name, (const char *)b + 157, llen,
                        size, mode, uid, gid, mtime, dmaj, dmin);
    goto out;
fallback:
    res = Py_NewRef(Py_None);
out:
    PyBuffer_Release(&buf);
    return res;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Scan a block of a payload; returns (cuts, state)."},
    {"finish", finish, METH_VARARGS, "Settle a pending zero run; returns (cuts, state)."},
    {"parse_header", parse_header, METH_VARARGS, "Fields of a plain USTAR/GNU header block, or None."},
    {"chunks", chunks, METH_VARARGS, "All chunks of one whole payload as (offset, size, is_zeros)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rollsum", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rollsum(void) { return PyModule_Create(&module); }
