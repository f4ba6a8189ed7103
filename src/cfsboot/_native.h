/*
 * cfsboot._native: what its three files share.
 *
 *   _native.c         the module: method table, docstrings, PyInit__native,
 *                     multibuffer()
 *   _native_verity.c  fs-verity Merkle tree; digest_fd, digest_buffer, digest_paths
 *   _native_walk.c    fingerprint_tree (the cache's walk); list_directory and Stat
 *
 * Include this first in each of them: Python.h must come before any system header.
 */
#ifndef CFSBOOT_NATIVE_H
#define CFSBOOT_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdlib.h>
#include <time.h>

/* A growable byte buffer: the small-file batch (_native_verity.c) and a
 * directory listing's names, xattrs and data (_native_walk.c). */
typedef struct {
    char *data;
    size_t len, room;
} bytes_buf;

static inline int cfs_buf_reserve(bytes_buf *b, size_t more)
{
    if (b->len + more <= b->room)
        return 0;
    size_t room = b->room ? b->room : 256;
    while (room < b->len + more)
        room *= 2;
    char *data = realloc(b->data, room);
    if (!data)
        return -1;
    b->data = data;
    b->room = room;
    return 0;
}

/* Nanoseconds since the epoch, as Python's os.stat_result computes them. */
static inline PyObject *cfs_time_ns(const struct timespec *t)
{
    long long sec = (long long)t->tv_sec;
    if (sec > -9000000000LL && sec < 9000000000LL)
        return PyLong_FromLongLong(sec * 1000000000LL + t->tv_nsec);
    PyObject *s = PyLong_FromLongLong(sec), *g = PyLong_FromLong(1000000000L), *n = NULL,
             *prod = NULL, *sum = NULL;
    if (s && g && (prod = PyNumber_Multiply(s, g)) && (n = PyLong_FromLong(t->tv_nsec)))
        sum = PyNumber_Add(prod, n);
    Py_XDECREF(s);
    Py_XDECREF(g);
    Py_XDECREF(prod);
    Py_XDECREF(n);
    return sum;
}

/* ---- _native_verity.c ------------------------------------------------------ */

/* Whether blocks are hashed in AVX-512 lanes (_multibuffer.h); multibuffer()
 * switches it. */
extern int cfs_multibuffer;

PyObject *cfs_py_digest_fd(PyObject *self, PyObject *args);
PyObject *cfs_py_digest_buffer(PyObject *self, PyObject *args);
PyObject *cfs_py_digest_paths(PyObject *self, PyObject *args);

/* ---- _native_walk.c -------------------------------------------------------- */

/* The Stat struct sequence list_directory returns: PyInit__native creates
 * cfs_stat_type from cfs_stat_desc. */
extern PyTypeObject *cfs_stat_type;
extern PyStructSequence_Desc cfs_stat_desc;

PyObject *cfs_py_fingerprint_tree(PyObject *self, PyObject *args);
PyObject *cfs_py_list_directory(PyObject *self, PyObject *args);

#endif
