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
    PyObject *cuts;
    int failed;
} state_t;

static void emit(state_t *st, unsigned long long end, int zeros) {
    if (st->failed) return;
    PyObject *t = Py_BuildValue("(KO)", end, zeros ? Py_True : Py_False);
    if (!t || PyList_Append(st->cuts, t) < 0) st->failed = 1;
    Py_XDECREF(t);
}

static void flush_pending(state_t *st) {
    for (Py_ssize_t k = 0; k < st->npending; k++) emit(st, st->pending[k], 0);
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
    st->failed = 0;
    return 0;
}

static PyObject *build_result(state_t *st) {
    PyObject *pend = NULL, *state = NULL, *res = NULL;
    if (st->failed) goto out;
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
    res = PyTuple_Pack(2, st->cuts, state);
out:
    Py_XDECREF(pend);
    Py_XDECREF(state);
    Py_DECREF(st->cuts);
    return res;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *stobj;
    state_t *st = PyMem_Malloc(sizeof(state_t));
    if (!st) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "y*O", &buf, &stobj)) {
        PyMem_Free(st);
        return NULL;
    }
    if (parse_state(stobj, st) < 0 || !(st->cuts = PyList_New(0))) {
        PyBuffer_Release(&buf);
        PyMem_Free(st);
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)buf.buf;
    const Py_ssize_t n = buf.len;
    const unsigned long long base = st->pos;
    uint32_t s1 = st->s1, s2 = st->s2;
    unsigned wofs = st->wofs;
    unsigned long long z = st->zero_run;
    uint8_t *win = st->window;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t c = p[i];
        const uint8_t drop = win[wofs];
        s1 += (uint32_t)c - drop;
        s2 += s1 - (uint32_t)WINDOW * ((uint32_t)drop + CHAR_OFFSET);
        win[wofs] = c;
        wofs = (wofs + 1) & (WINDOW - 1);
        const unsigned long long zprev = z;
        z = c ? 0 : z + 1;
        const int split = (s2 & MASK) == MASK;
        if (__builtin_expect(split | (z >= THRESHOLD) | ((c != 0) & ((zprev >= THRESHOLD) | (st->npending != 0))), 0)) {
            const unsigned long long q = base + (unsigned long long)i;
            if (c) {
                if (zprev >= THRESHOLD) emit(st, q, 1); /* the hole ends here */
                else flush_pending(st);                  /* a short run: its splits stand */
                if (split) emit(st, q + 1, 0);
            } else if (z == THRESHOLD) {
                st->npending = 0;                        /* the run is a hole after all */
                emit(st, q + 1 - THRESHOLD, 0);          /* the data chunk ends where it starts */
            } else if (z < THRESHOLD) {
                st->pending[st->npending++] = q + 1;     /* decided when the run ends */
            }
            if (z >= THRESHOLD) {
                /* Deep in a hole the window holds only zeros, so s1 and s2 stay
                 * put: skip the rest of the run, moving only the window offset. */
                Py_ssize_t j = i + 1;
                while (j < n && p[j] == 0) j++;
                const Py_ssize_t k = j - i - 1;
                wofs = (unsigned)((wofs + (unsigned long long)k) & (WINDOW - 1));
                z += (unsigned long long)k;
                i = j - 1;
            }
        }
    }
    st->s1 = s1;
    st->s2 = s2;
    st->wofs = wofs;
    st->zero_run = z;
    st->pos = base + (unsigned long long)n;
    PyBuffer_Release(&buf);
    PyObject *res = build_result(st);
    PyMem_Free(st);
    return res;
}

static PyObject *finish(PyObject *self, PyObject *args) {
    PyObject *stobj;
    state_t *st = PyMem_Malloc(sizeof(state_t));
    if (!st) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "O", &stobj) || parse_state(stobj, st) < 0 || !(st->cuts = PyList_New(0))) {
        PyMem_Free(st);
        return NULL;
    }
    if (st->zero_run >= THRESHOLD) emit(st, st->pos, 1);
    else flush_pending(st);
    st->zero_run = 0;
    PyObject *res = build_result(st);
    PyMem_Free(st);
    return res;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Scan a block of a payload; returns (cuts, state)."},
    {"finish", finish, METH_VARARGS, "Settle a pending zero run; returns (cuts, state)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rollsum", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rollsum(void) { return PyModule_Create(&module); }
