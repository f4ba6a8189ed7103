/*
 * cfsboot._native: the two hot loops of a sealed-image build, in C.
 *
 * Optional: every function here has a pure-Python twin (cfsboot.fsverity.digest,
 * cfsboot.fsverity.files, cfsboot.tree.hashcache) that gives the same results;
 * the tests compare the two.  This module exists for speed only:
 *
 *  - fs-verity hashes every 4096-byte block with its own SHA call.  From Python
 *    that is a hashlib object and a GIL hand-off per block (~10% over plain
 *    hashing, and threads fight over the GIL); here the whole file, read and
 *    Merkle tree, runs without the GIL, so plain threads scale across CPUs.
 *  - The --cache "has anything changed?" walk stats every entry of the tree;
 *    in C that is a syscall per entry instead of ~7 us of interpreter work.
 *
 * Every function releases the GIL for its whole I/O and hashing work and
 * touches no Python object meanwhile.
 *
 * Files:
 *  - _native.c (this one): the module only: method table, docstrings,
 *    PyInit__native (creates the Stat type, picks the multi-buffer default)
 *    and multibuffer().
 *  - _native_verity.c: the fs-verity Merkle tree, digest_fd, digest_buffer,
 *    digest_paths (with the small-file batching and the multi-buffer switch).
 *  - _native_walk.c: fingerprint_tree (the --cache walk) and list_directory
 *    (the tree scan's directory listing, with the Stat struct sequence).
 *  - _native.h: what they share; _sha512x8.c, _sha256x16.c (_multibuffer.h):
 *    SHA-512 and SHA-256 of many blocks at once in AVX-512 lanes.
 */
#include "_native.h"

#include "_multibuffer.h"

/* multibuffer(enabled: bool | None = None) -> bool: whether blocks are hashed
 * in AVX-512 lanes (SHA-512 eight, SHA-256 sixteen at a time); with an
 * argument, first switch it (on only where the CPU can). */
static PyObject *py_multibuffer(PyObject *self, PyObject *args)
{
    PyObject *enable = Py_None;
    if (!PyArg_ParseTuple(args, "|O:multibuffer", &enable))
        return NULL;
    if (enable != Py_None) {
        int on = PyObject_IsTrue(enable);
        if (on < 0)
            return NULL;
        cfs_multibuffer = on && sha512x8_available();
    }
    return PyBool_FromLong(cfs_multibuffer);
}

static PyMethodDef methods[] = {
    {"multibuffer", py_multibuffer, METH_VARARGS,
     "multibuffer(enabled=None) -> bool: hash blocks in AVX-512 lanes; switch it."},
    {"digest_fd", cfs_py_digest_fd, METH_VARARGS,
     "digest_fd(fd, alg) -> (fs-verity digest, bytes read): fd from its position to EOF."},
    {"digest_buffer", cfs_py_digest_buffer, METH_VARARGS,
     "digest_buffer(data, alg) -> fs-verity digest of bytes in memory."},
    {"digest_paths", cfs_py_digest_paths, METH_VARARGS,
     "digest_paths(paths, alg, nofollow, dir_fd=AT_FDCWD) -> list of results or errnos."},
    {"list_directory", cfs_py_list_directory, METH_VARARGS,
     "list_directory(path, inline_max) -> [(name, path, Stat, xattrs, data)]."},
    {"fingerprint_tree", cfs_py_fingerprint_tree, METH_VARARGS,
     "fingerprint_tree(root, salt) -> (sha256, newest ctime sec, nsec)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "cfsboot._native",
    "C versions of cfsboot's hot loops (fs-verity hashing, the cache's tree walk).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    cfs_multibuffer = sha512x8_available();
    if (!cfs_stat_type && !(cfs_stat_type = PyStructSequence_NewType(&cfs_stat_desc))) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Stat", (PyObject *)cfs_stat_type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
