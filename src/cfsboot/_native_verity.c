/*
 * cfsboot._native, part 1 of 2: fs-verity digests (the module itself is in
 * _native.c, the shared declarations in _native.h).
 *
 * The Merkle tree over 4096-byte blocks, and digest_fd / digest_buffer /
 * digest_paths on top of it.  digest_paths reads small files whole into one
 * batch buffer so that SHA-512 can hash their blocks eight at a time across
 * files (_sha512x8.c, _sha256x16.c), when cfs_multibuffer says so.
 */
#include "_native.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "_multibuffer.h"

#define BLOCK 4096
#define READ_SIZE (1 << 20)
/* 4096-byte blocks of >= 32-byte hashes: 64 levels would hold 2^(12+7*63) bytes. */
#define MAX_LEVELS 12
#define ALG_SHA256 1 /* the kernel's FS_VERITY_HASH_ALG_* numbers */
#define ALG_SHA512 2
#define NOT_REGULAR (-1) /* a result code: opened without following, not a file */

/* ---- fs-verity Merkle tree ----------------------------------------------- */

typedef struct {
    int alg;
    size_t hash_size;
    uint64_t size; /* data bytes fed */
    int levels;    /* levels holding hashes */
    size_t used[MAX_LEVELS];
    unsigned char level[MAX_LEVELS][BLOCK];
} merkle;

static void hash_block(int alg, const unsigned char *block, unsigned char *out)
{
    if (alg == ALG_SHA512)
        SHA512(block, BLOCK, out);
    else
        SHA256(block, BLOCK, out);
}

static size_t hash_size(int alg) { return alg == ALG_SHA512 ? 64 : 32; }

static void merkle_init(merkle *m, int alg)
{
    m->alg = alg;
    m->hash_size = hash_size(alg);
    m->size = 0;
    m->levels = 0;
    memset(m->used, 0, sizeof m->used);
}

/* Append a hash to level k.  A full level is hashed into the level above only
 * when one more hash arrives: until then it might be the top of the tree. */
static int merkle_push(merkle *m, int k, const unsigned char *hash)
{
    if (k >= MAX_LEVELS)
        return -1;
    if (m->used[k] == BLOCK) {
        unsigned char parent[64];
        hash_block(m->alg, m->level[k], parent);
        m->used[k] = 0;
        if (merkle_push(m, k + 1, parent) < 0)
            return -1;
    }
    if (k >= m->levels)
        m->levels = k + 1;
    memcpy(m->level[k] + m->used[k], hash, m->hash_size);
    m->used[k] += m->hash_size;
    return 0;
}

/* Whether to hash blocks in AVX-512 lanes (SHA-512 eight, SHA-256 sixteen at a
 * time: _sha512x8.c, _sha256x16.c): set at import from the CPU's features;
 * tests switch it off to check the one-block path. */
int cfs_multibuffer;

/* How many blocks one multi-buffer call hashes (1: one at a time). */
static size_t lanes_for(int alg)
{
    return !cfs_multibuffer ? 1 : alg == ALG_SHA512 ? 8 : 16;
}

/* The hashes of lanes_for(alg) blocks into out, 512 bytes either way. */
static void hash_lanes(int alg, const unsigned char *const blocks[], unsigned char *out)
{
    if (alg == ALG_SHA512)
        sha512x8_blocks(blocks, out);
    else
        sha256x16_blocks(blocks, out);
}

/* Hash `count` consecutive blocks into level 0. */
static int merkle_blocks(merkle *m, const unsigned char *data, size_t count)
{
    unsigned char hashes[512];
    const unsigned char *blocks[16];
    size_t i = 0, lanes = lanes_for(m->alg);
    if (lanes > 1) {
        for (; i + lanes <= count; i += lanes) {
            for (size_t k = 0; k < lanes; k++)
                blocks[k] = data + (i + k) * BLOCK;
            hash_lanes(m->alg, blocks, hashes);
            for (size_t k = 0; k < lanes; k++)
                if (merkle_push(m, 0, hashes + m->hash_size * k) < 0)
                    return -1;
        }
    }
    for (; i < count; i++) {
        hash_block(m->alg, data + i * BLOCK, hashes);
        if (merkle_push(m, 0, hashes) < 0)
            return -1;
    }
    return 0;
}

/* Feed n bytes; n is a multiple of BLOCK except for the file's last chunk,
 * whose tail must be followed by room up to the next block boundary (zeroed here). */
static int merkle_feed(merkle *m, unsigned char *data, size_t n)
{
    size_t rest = n % BLOCK;
    if (rest)
        memset(data + n, 0, BLOCK - rest);
    if (merkle_blocks(m, data, (n + BLOCK - 1) / BLOCK) < 0)
        return -1;
    m->size += n;
    return 0;
}

/* The fs-verity digest: the descriptor over the root hash, hashed. */
static int merkle_digest(merkle *m, unsigned char *out)
{
    unsigned char root[64] = {0};
    if (m->size > BLOCK) {
        for (int k = 0;; k++) {
            memset(m->level[k] + m->used[k], 0, BLOCK - m->used[k]);
            if (k == m->levels - 1) { /* the top: one block */
                hash_block(m->alg, m->level[k], root);
                break;
            }
            unsigned char hash[64];
            hash_block(m->alg, m->level[k], hash);
            m->used[k] = 0;
            if (merkle_push(m, k + 1, hash) < 0)
                return -1;
        }
    } else if (m->size > 0) { /* one data block: its hash is the root */
        memcpy(root, m->level[0], m->hash_size);
    }
    unsigned char descriptor[256] = {1, (unsigned char)m->alg, 12, 0};
    for (int i = 0; i < 8; i++)
        descriptor[8 + i] = (unsigned char)(m->size >> (8 * i));
    memcpy(descriptor + 16, root, m->hash_size);
    if (m->alg == ALG_SHA512)
        SHA512(descriptor, sizeof descriptor, out);
    else
        SHA256(descriptor, sizeof descriptor, out);
    return 0;
}

/* Per-thread scratch: the read buffer (plus a block of room for zero padding)
 * and the tree state.  Allocated once per thread and kept, because a fresh
 * 1 MiB allocation per file costs page faults that show on trees of small files. */
static __thread unsigned char *scratch_buffer;
static __thread merkle *scratch_tree;

static int scratch(void)
{
    if (!scratch_buffer)
        scratch_buffer = malloc(READ_SIZE + BLOCK);
    if (!scratch_tree)
        scratch_tree = malloc(sizeof(merkle));
    return scratch_buffer && scratch_tree ? 0 : ENOMEM;
}

/* Hash fd from its position to EOF.  0, or an errno. */
static int digest_fd_nogil(int fd, int alg, unsigned char *out, uint64_t *size)
{
    if (scratch())
        return ENOMEM;
    unsigned char *buffer = scratch_buffer;
    merkle *m = scratch_tree;
    merkle_init(m, alg);
    for (;;) {
        size_t filled = 0;
        while (filled < READ_SIZE) {
            ssize_t got = read(fd, buffer + filled, READ_SIZE - filled);
            if (got < 0) {
                if (errno == EINTR)
                    continue;
                return errno;
            }
            if (got == 0)
                break;
            filled += (size_t)got;
        }
        if (filled && merkle_feed(m, buffer, filled) < 0)
            return EFBIG;
        if (filled < READ_SIZE)
            break;
    }
    *size = m->size;
    return merkle_digest(m, out) < 0 ? EFBIG : 0;
}

static int parse_alg(int alg)
{
    if (alg != ALG_SHA256 && alg != ALG_SHA512) {
        PyErr_Format(PyExc_ValueError, "unknown fs-verity algorithm number %d", alg);
        return -1;
    }
    return 0;
}

PyObject *cfs_py_digest_fd(PyObject *self, PyObject *args)
{
    int fd, alg, err;
    unsigned char digest[64];
    uint64_t size = 0;
    if (!PyArg_ParseTuple(args, "ii:digest_fd", &fd, &alg) || parse_alg(alg) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    err = digest_fd_nogil(fd, alg, digest, &size);
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(y#K)", digest, (Py_ssize_t)hash_size(alg),
                         (unsigned long long)size);
}

PyObject *cfs_py_digest_buffer(PyObject *self, PyObject *args)
{
    Py_buffer view;
    int alg, failed = 0;
    unsigned char digest[64];
    if (!PyArg_ParseTuple(args, "y*i:digest_buffer", &view, &alg))
        return NULL;
    if (parse_alg(alg) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    merkle *m = malloc(sizeof(merkle));
    if (!m) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *data = view.buf;
    size_t len = (size_t)view.len, whole = len - len % BLOCK;
    unsigned char hash[64], tail[BLOCK];
    merkle_init(m, alg);
    failed = merkle_blocks(m, data, whole / BLOCK) < 0;
    if (whole < len && !failed) {
        memset(tail, 0, BLOCK);
        memcpy(tail, data + whole, len - whole);
        hash_block(alg, tail, hash);
        failed = merkle_push(m, 0, hash) < 0;
    }
    m->size = len;
    failed = failed || merkle_digest(m, digest) < 0;
    Py_END_ALLOW_THREADS
    free(m);
    PyBuffer_Release(&view);
    if (failed) {
        PyErr_SetString(PyExc_ValueError, "data too large for an fs-verity tree");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)digest, (Py_ssize_t)hash_size(alg));
}

/* ---- many files ------------------------------------------------------------ */

typedef struct {
    int err; /* 0, an errno, or NOT_REGULAR */
    int unchanged;
    int waiting; /* read into the batch buffer, blocks not hashed yet */
    uint64_t size;
    size_t data_at; /* where its bytes are in the batch buffer */
    struct stat before;
    unsigned char digest[64];
} file_result;

/* Files up to this size are read whole and their blocks hashed together with
 * the other small files of the batch, eight at a time across files: most
 * files have fewer than eight blocks, and alone they would not fill the lanes. */
#define SMALL_FILE (256 * 1024)

static __thread bytes_buf batch_data, batch_hashes;

/* Read all of a small file into the batch buffer, zero-padded to whole blocks.
 * 0 when done; -1 when it is not the size fstat said (the caller streams it
 * from the start); an errno when reading fails. */
static int read_small_file(int fd, file_result *r)
{
    size_t want = (size_t)r->before.st_size;
    if (cfs_buf_reserve(&batch_data, want + BLOCK + 1))
        return ENOMEM;
    unsigned char *at = (unsigned char *)batch_data.data + batch_data.len;
    size_t got = 0;
    while (got < want + 1) { /* one byte more shows a file that grew */
        ssize_t n = read(fd, at + got, want + 1 - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got != want) {
        if (lseek(fd, 0, SEEK_SET) < 0)
            return errno;
        return -1;
    }
    size_t padded = (want + BLOCK - 1) / BLOCK * BLOCK;
    memset(at + want, 0, padded - want);
    r->waiting = 1;
    r->size = want;
    r->data_at = batch_data.len;
    batch_data.len += padded;
    return 0;
}

/* Hash the blocks of every waiting file, eight at a time across files, then
 * build each file's tree from its block hashes. */
static int finish_small_files(file_result *results, size_t n, int alg)
{
    size_t blocks = 0;
    for (size_t i = 0; i < n; i++)
        if (results[i].waiting)
            blocks += (results[i].size + BLOCK - 1) / BLOCK;
    batch_hashes.len = 0;
    if (cfs_buf_reserve(&batch_hashes, blocks * 64 + 1))
        return ENOMEM;
    unsigned char *hashes = (unsigned char *)batch_hashes.data;
    const unsigned char *lanes[16];
    unsigned char *outs[16], together[512];
    size_t queued = 0, next = 0, width = lanes_for(alg), size = hash_size(alg);
    for (size_t i = 0; i < n; i++) {
        if (!results[i].waiting)
            continue;
        const unsigned char *data = (unsigned char *)batch_data.data + results[i].data_at;
        for (size_t b = 0; b < (results[i].size + BLOCK - 1) / BLOCK; b++) {
            lanes[queued] = data + b * BLOCK;
            outs[queued++] = hashes + 64 * next++;
            if (queued == width) {
                hash_lanes(alg, lanes, together);
                for (size_t k = 0; k < width; k++)
                    memcpy(outs[k], together + size * k, size);
                queued = 0;
            }
        }
    }
    for (size_t k = 0; k < queued; k++)
        hash_block(alg, lanes[k], outs[k]);
    merkle *m = scratch_tree;
    next = 0;
    for (size_t i = 0; i < n; i++) {
        file_result *r = &results[i];
        if (!r->waiting)
            continue;
        merkle_init(m, alg);
        for (size_t b = 0; b < (r->size + BLOCK - 1) / BLOCK; b++)
            if (merkle_push(m, 0, hashes + 64 * next++) < 0)
                return EFBIG;
        m->size = r->size;
        if (merkle_digest(m, r->digest) < 0)
            return EFBIG;
        r->waiting = 0;
    }
    return 0;
}

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static void digest_one(int dir_fd, const char *path, int alg, int nofollow, file_result *r)
{
    int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY;
    if (nofollow) /* a FIFO put in a file's place must not block us */
        flags |= O_NOFOLLOW | O_NONBLOCK;
    int fd = openat(dir_fd, path, flags);
    struct stat after;
    if (fd < 0) {
        r->err = errno;
        return;
    }
    int small = -1;
    if (fstat(fd, &r->before) < 0)
        r->err = errno;
    else if (nofollow && !S_ISREG(r->before.st_mode))
        r->err = NOT_REGULAR;
    else if (cfs_multibuffer && S_ISREG(r->before.st_mode) &&
             r->before.st_size <= SMALL_FILE && (small = read_small_file(fd, r)) > 0)
        r->err = small; /* (the digest comes from finish_small_files) */
    else if (small == 0 || !(r->err = digest_fd_nogil(fd, alg, r->digest, &r->size))) {
        if (fstat(fd, &after) < 0)
            r->err = errno;
        else
            r->unchanged = same_file(&r->before, &after);
    }
    close(fd);
}

static PyObject *result_tuple(const file_result *r, int alg)
{
    if (r->err)
        return PyLong_FromLong(r->err);
    PyObject *mtime = cfs_time_ns(&r->before.st_mtim);
    PyObject *ctime = cfs_time_ns(&r->before.st_ctim);
    PyObject *out = NULL;
    if (mtime && ctime)
        out = Py_BuildValue(
            "(y#KkKKLOOO)", r->digest, (Py_ssize_t)hash_size(alg), (unsigned long long)r->size,
            (unsigned long)r->before.st_mode, (unsigned long long)r->before.st_dev,
            (unsigned long long)r->before.st_ino, (long long)r->before.st_size, mtime, ctime,
            r->unchanged ? Py_True : Py_False);
    Py_XDECREF(mtime);
    Py_XDECREF(ctime);
    return out;
}

/* digest_paths(paths: list[bytes], alg, nofollow, dir_fd=AT_FDCWD) -> list
 * One entry per path: (digest, bytes read, st_mode, st_dev, st_ino, st_size,
 * st_mtime_ns, st_ctime_ns, unchanged) from fstat before and after reading,
 * or an int: the errno, or -1 when nofollow found something not a regular file. */
PyObject *cfs_py_digest_paths(PyObject *self, PyObject *args)
{
    PyObject *paths_arg, *paths, *out = NULL;
    int alg, nofollow, dir_fd = AT_FDCWD;
    if (!PyArg_ParseTuple(args, "Oip|i:digest_paths", &paths_arg, &alg, &nofollow, &dir_fd) ||
        parse_alg(alg) < 0)
        return NULL;
    /* A tuple of our own: the caller's list could change while we run unlocked. */
    if (!(paths = PySequence_Tuple(paths_arg)))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(paths);
    const char **names = PyMem_Calloc((size_t)n + 1, sizeof *names);
    file_result *results = PyMem_Calloc((size_t)n + 1, sizeof *results);
    if (!names || !results) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyTuple_GET_ITEM(paths, i);
        if (!PyBytes_Check(p)) {
            PyErr_SetString(PyExc_TypeError, "digest_paths: paths must be bytes");
            goto done;
        }
        if ((size_t)PyBytes_GET_SIZE(p) != strlen(PyBytes_AS_STRING(p))) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            goto done;
        }
        names[i] = PyBytes_AS_STRING(p);
    }
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    batch_data.len = 0;
    err = scratch();
    for (Py_ssize_t i = 0; i < n && !err; i++)
        digest_one(dir_fd, names[i], alg, nofollow, &results[i]);
    if (!err)
        err = finish_small_files(results, (size_t)n, alg);
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (!(out = PyList_New(n)))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = result_tuple(&results[i], alg);
        if (!item) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
    }
done:
    PyMem_Free(names);
    PyMem_Free(results);
    Py_DECREF(paths);
    return out;
}
