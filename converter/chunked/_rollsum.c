/*
 * Native chunk-boundary scanner for zconv (our own code; the rules are the
 * reference writer's, see converter/chunked/chunker.py for the full story).
 *
 * scan(data, state) -> (cuts, state)
 *   state = (s1, s2, wofs, window: bytes[64], zero_run, pos)
 *   cuts  = list of (end_offset, is_zeros)
 *
 * Zeros are not rolled in when seen: a run is counted, and when it ends
 * (at a non-zero byte, or in finish) it becomes either a hole (>= 1024
 * bytes: data chunk ends at its start, zeros chunk ends at its end, no
 * split tested inside) or ordinary data (every zero rolled and tested).
 * That is exactly the reference's holes finder, which also looks ahead
 * before handing zeros to the rolling checksum.
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
    PyObject *cuts;
    int failed;
} state_t;

static inline void roll(state_t *st, uint8_t ch) {
    uint8_t drop = st->window[st->wofs];
    st->s1 += (uint32_t)ch - (uint32_t)drop;
    st->s2 += st->s1 - (uint32_t)WINDOW * ((uint32_t)drop + CHAR_OFFSET);
    st->window[st->wofs] = ch;
    st->wofs = (st->wofs + 1) & (WINDOW - 1);
}

static void emit(state_t *st, unsigned long long end, int zeros) {
    if (st->failed) return;
    PyObject *t = Py_BuildValue("(KO)", end, zeros ? Py_True : Py_False);
    if (!t || PyList_Append(st->cuts, t) < 0) st->failed = 1;
    Py_XDECREF(t);
}

/* The zero run that ends at absolute offset `end` is settled. */
static void close_run(state_t *st, unsigned long long end) {
    unsigned long long z = st->zero_run, start = end - z;
    if (!z) return;
    if (z >= THRESHOLD) {
        emit(st, start, 0);
        /* After 64 zeros the window holds only zeros: s1 = 64*31 and s2 stops
         * changing, so the rest of the run only moves the window offset. */
        unsigned long long k = z < WINDOW ? z : WINDOW;
        for (unsigned long long i = 0; i < k; i++) roll(st, 0);
        st->wofs = (unsigned)((st->wofs + (z - k)) & (WINDOW - 1));
        emit(st, end, 1);
    } else {
        for (unsigned long long i = 0; i < z; i++) {
            roll(st, 0);
            if ((st->s2 & MASK) == MASK) emit(st, start + i + 1, 0);
        }
    }
    st->zero_run = 0;
}

static int parse_state(PyObject *o, state_t *st) {
    PyObject *win;
    unsigned int s1, s2, wofs;
    if (!PyArg_ParseTuple(o, "IIISKK", &s1, &s2, &wofs, &win, &st->zero_run, &st->pos)) return -1;
    if (PyBytes_GET_SIZE(win) != WINDOW) {
        PyErr_SetString(PyExc_ValueError, "window must be 64 bytes");
        return -1;
    }
    st->s1 = s1;
    st->s2 = s2;
    st->wofs = wofs & (WINDOW - 1);
    memcpy(st->window, PyBytes_AS_STRING(win), WINDOW);
    st->failed = 0;
    return 0;
}

static PyObject *build_result(state_t *st) {
    if (st->failed) {
        Py_DECREF(st->cuts);
        return NULL;
    }
    PyObject *state = Py_BuildValue("(IIIy#KK)", st->s1, st->s2, st->wofs, (const char *)st->window,
                                    (Py_ssize_t)WINDOW, st->zero_run, st->pos);
    if (!state) {
        Py_DECREF(st->cuts);
        return NULL;
    }
    PyObject *res = PyTuple_Pack(2, st->cuts, state);
    Py_DECREF(st->cuts);
    Py_DECREF(state);
    return res;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *stobj;
    state_t st;
    if (!PyArg_ParseTuple(args, "y*O", &buf, &stobj)) return NULL;
    if (parse_state(stobj, &st) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    st.cuts = PyList_New(0);
    if (!st.cuts) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)buf.buf;
    Py_ssize_t n = buf.len;
    unsigned long long base = st.pos;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == 0) {
            st.zero_run++;
            continue;
        }
        if (st.zero_run) close_run(&st, base + (unsigned long long)i);
        roll(&st, c);
        if ((st.s2 & MASK) == MASK) emit(&st, base + (unsigned long long)i + 1, 0);
    }
    st.pos = base + (unsigned long long)n;
    PyBuffer_Release(&buf);
    return build_result(&st);
}

static PyObject *finish(PyObject *self, PyObject *args) {
    PyObject *stobj;
    state_t st;
    if (!PyArg_ParseTuple(args, "O", &stobj)) return NULL;
    if (parse_state(stobj, &st) < 0) return NULL;
    st.cuts = PyList_New(0);
    if (!st.cuts) return NULL;
    close_run(&st, st.pos);
    return build_result(&st);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Scan a block of a payload; returns (cuts, state)."},
    {"finish", finish, METH_VARARGS, "Settle a pending zero run; returns (cuts, state)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rollsum", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rollsum(void) { return PyModule_Create(&module); }
