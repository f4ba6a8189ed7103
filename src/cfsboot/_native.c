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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "_sha512x8.h"

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

static void merkle_init(merkle *m, int alg)
{
    m->alg = alg;
    m->hash_size = alg == ALG_SHA512 ? 64 : 32;
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

/* Whether to hash SHA-512 blocks eight at a time (_sha512x8.c): set at import
 * from the CPU's features; tests switch it off to check the other path. */
static int use_x8;

/* Hash `count` consecutive blocks into level 0. */
static int merkle_blocks(merkle *m, const unsigned char *data, size_t count)
{
    unsigned char hashes[8 * 64];
    size_t i = 0;
    if (m->alg == ALG_SHA512 && use_x8) {
        for (; i + 8 <= count; i += 8) {
            sha512x8_4k(data + i * BLOCK, hashes);
            for (int lane = 0; lane < 8; lane++)
                if (merkle_push(m, 0, hashes + 64 * lane) < 0)
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

static size_t hash_size(int alg) { return alg == ALG_SHA512 ? 64 : 32; }

static PyObject *py_digest_fd(PyObject *self, PyObject *args)
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

static PyObject *py_digest_buffer(PyObject *self, PyObject *args)
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
    char *data;
    size_t len, room;
} bytes_buf;

static int buf_reserve(bytes_buf *b, size_t more)
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
 * 0 when done; 1 when it is not the size fstat said (the caller streams it). */
static int read_small_file(int fd, file_result *r)
{
    size_t want = (size_t)r->before.st_size;
    if (buf_reserve(&batch_data, want + BLOCK + 1))
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
    if (buf_reserve(&batch_hashes, blocks * 64 + 1))
        return ENOMEM;
    unsigned char *hashes = (unsigned char *)batch_hashes.data;
    const unsigned char *lanes[8];
    unsigned char *outs[8], eight[8 * 64];
    int queued = 0;
    size_t next = 0;
    for (size_t i = 0; i < n; i++) {
        if (!results[i].waiting)
            continue;
        const unsigned char *data = (unsigned char *)batch_data.data + results[i].data_at;
        for (size_t b = 0; b < (results[i].size + BLOCK - 1) / BLOCK; b++) {
            lanes[queued] = data + b * BLOCK;
            outs[queued++] = hashes + 64 * next++;
            if (queued == 8) {
                sha512x8_blocks(lanes, eight);
                for (int k = 0; k < 8; k++)
                    memcpy(outs[k], eight + 64 * k, 64);
                queued = 0;
            }
        }
    }
    for (int k = 0; k < queued; k++)
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
    else if (alg == ALG_SHA512 && use_x8 && S_ISREG(r->before.st_mode) &&
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

/* Nanoseconds since the epoch, as Python's os.stat_result computes them. */
static PyObject *time_ns(const struct timespec *t)
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

static PyObject *result_tuple(const file_result *r, int alg)
{
    if (r->err)
        return PyLong_FromLong(r->err);
    PyObject *mtime = time_ns(&r->before.st_mtim), *ctime = time_ns(&r->before.st_ctim);
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
static PyObject *py_digest_paths(PyObject *self, PyObject *args)
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

/* ---- tree fingerprint ------------------------------------------------------ */

/* Mirrors cfsboot.tree.hashcache: the same records, the same order, the same
 * SHA-256 over their concatenation (records are little-endian). */

typedef struct {
    char **items;
    size_t count, room;
} path_stack;

static int stack_push(path_stack *s, char *path)
{
    if (s->count == s->room) {
        size_t room = s->room ? 2 * s->room : 64;
        char **items = realloc(s->items, room * sizeof *items);
        if (!items)
            return -1;
        s->items = items;
        s->room = room;
    }
    s->items[s->count++] = path;
    return 0;
}

typedef struct {
    EVP_MD_CTX *ctx;
    struct timespec newest_ctime;
} fingerprint;

static void put_le(unsigned char *at, uint64_t value, int bytes)
{
    for (int i = 0; i < bytes; i++)
        at[i] = (unsigned char)(value >> (8 * i));
}

/* The nanosecond count modulo 2^64, as the Python side packs it. */
static uint64_t wrapped_ns(const struct timespec *t)
{
    return (uint64_t)t->tv_sec * 1000000000u + (uint64_t)t->tv_nsec;
}

static int fp_entry(fingerprint *fp, const char *name, size_t name_len, const struct stat *st)
{
    unsigned char record[72];
    put_le(record, name_len, 4);
    put_le(record + 4, st->st_mode, 4);
    put_le(record + 8, st->st_dev, 8);
    put_le(record + 16, st->st_ino, 8);
    put_le(record + 24, st->st_nlink, 8);
    put_le(record + 32, st->st_uid, 4);
    put_le(record + 36, st->st_gid, 4);
    put_le(record + 40, st->st_rdev, 8);
    put_le(record + 48, (uint64_t)st->st_size, 8);
    put_le(record + 56, wrapped_ns(&st->st_mtim), 8);
    put_le(record + 64, wrapped_ns(&st->st_ctim), 8);
    if (st->st_ctim.tv_sec > fp->newest_ctime.tv_sec ||
        (st->st_ctim.tv_sec == fp->newest_ctime.tv_sec &&
         st->st_ctim.tv_nsec > fp->newest_ctime.tv_nsec))
        fp->newest_ctime = st->st_ctim;
    return EVP_DigestUpdate(fp->ctx, record, sizeof record) &&
                   EVP_DigestUpdate(fp->ctx, name, name_len)
               ? 0
               : -1;
}

/* One directory: its record, its entries' records, its subdirectories pushed
 * (in listing order, so the last one is walked first, as the Python walk does). */
static int fp_directory(fingerprint *fp, const char *path, path_stack *stack)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno;
    DIR *dir = fdopendir(fd);
    if (!dir) {
        int err = errno;
        close(fd);
        return err;
    }
    size_t path_len = strlen(path);
    int slash = path_len == 0 || path[path_len - 1] != '/';
    unsigned char head[8];
    put_le(head, 0xFFFFFFFFu, 4);
    put_le(head + 4, path_len, 4);
    int err = 0;
    if (!EVP_DigestUpdate(fp->ctx, head, sizeof head) ||
        !EVP_DigestUpdate(fp->ctx, path, path_len))
        err = EIO;
    for (;;) {
        if (err)
            break;
        errno = 0;
        struct dirent *entry = readdir(dir);
        if (!entry) {
            err = errno;
            break;
        }
        const char *name = entry->d_name;
        if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
            continue;
        struct stat st;
        if (fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            err = errno;
            break;
        }
        size_t name_len = strlen(name);
        if (fp_entry(fp, name, name_len, &st) < 0) {
            err = EIO;
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            char *child = malloc(path_len + 1 + name_len + 1);
            if (!child) {
                err = ENOMEM;
                break;
            }
            memcpy(child, path, path_len);
            size_t at = path_len;
            if (slash)
                child[at++] = '/';
            memcpy(child + at, name, name_len + 1);
            if (stack_push(stack, child) < 0) {
                free(child);
                err = ENOMEM;
                break;
            }
        }
    }
    closedir(dir);
    return err;
}

/* The Python walk lists a directory completely before it pushes the
 * subdirectories: pushing while listing gives the same stack, because
 * entries are pushed in listing order either way. */
static int fingerprint_walk(fingerprint *fp, const char *root)
{
    struct stat st;
    path_stack stack = {0};
    int err = 0;
    if (lstat(root, &st) < 0)
        return errno;
    if (fp_entry(fp, "", 0, &st) < 0)
        return EIO;
    char *first = strdup(root);
    if (!first || stack_push(&stack, first) < 0) {
        free(first);
        return ENOMEM;
    }
    while (stack.count) {
        char *path = stack.items[--stack.count];
        err = fp_directory(fp, path, &stack);
        free(path);
        if (err)
            break;
    }
    while (stack.count)
        free(stack.items[--stack.count]);
    free(stack.items);
    return err;
}

/* fingerprint_tree(root: bytes, salt: bytes) -> (sha256 digest, newest ctime
 * seconds, nanoseconds); OSError when the tree cannot be read. */
static PyObject *py_fingerprint_tree(PyObject *self, PyObject *args)
{
    const char *root;
    Py_buffer salt;
    int err = 0;
    unsigned char digest[32];
    unsigned int digest_len = 0;
    if (!PyArg_ParseTuple(args, "yy*:fingerprint_tree", &root, &salt))
        return NULL;
    fingerprint fp = {EVP_MD_CTX_new(), {0, 0}};
    if (!fp.ctx) {
        PyBuffer_Release(&salt);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    if (!EVP_DigestInit_ex(fp.ctx, EVP_sha256(), NULL) ||
        !EVP_DigestUpdate(fp.ctx, salt.buf, (size_t)salt.len))
        err = EIO;
    if (!err)
        err = fingerprint_walk(&fp, root);
    if (!err && !EVP_DigestFinal_ex(fp.ctx, digest, &digest_len))
        err = EIO;
    Py_END_ALLOW_THREADS
    EVP_MD_CTX_free(fp.ctx);
    PyBuffer_Release(&salt);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(y#Ll)", digest, (Py_ssize_t)digest_len,
                         (long long)fp.newest_ctime.tv_sec, (long)fp.newest_ctime.tv_nsec);
}

/* ---- directory listing for the tree scan --------------------------------- */

/* One entry as the scan needs it: lstat, xattrs, and for a symlink its target
 * and for a small regular file its bytes.  Anything that goes wrong marks the
 * entry "failed" and the Python scanner redoes that entry itself, so every
 * error keeps the wording (and the checks) of the pure-Python code. */

typedef struct {
    size_t name_at, name_len; /* in the names buffer */
    size_t xattr_at, xattr_len; /* in the xattrs buffer: (u32 len, name, u32 len, value)* */
    size_t data_at;
    ssize_t data_len; /* -1: no data */
    int failed;
    struct stat st;
} dir_entry;

typedef struct {
    dir_entry *items;
    size_t count, room;
    bytes_buf names, xattrs, data;
} dir_listing;

static PyTypeObject *StatType;

static PyStructSequence_Field stat_fields[] = {
    {"st_mode", NULL}, {"st_ino", NULL},   {"st_dev", NULL},      {"st_nlink", NULL},
    {"st_uid", NULL},  {"st_gid", NULL},   {"st_size", NULL},     {"st_rdev", NULL},
    {"st_mtime_ns", NULL}, {"st_ctime_ns", NULL}, {NULL, NULL},
};

static PyStructSequence_Desc stat_desc = {
    "cfsboot._native.Stat", "The lstat fields a tree scan uses (names as in os.stat_result).",
    stat_fields, 10,
};

static int put_u32(bytes_buf *b, size_t value)
{
    if (buf_reserve(b, 4))
        return -1;
    put_le((unsigned char *)b->data + b->len, value, 4);
    b->len += 4;
    return 0;
}

static int put_bytes(bytes_buf *b, const void *data, size_t len)
{
    if (put_u32(b, len) || buf_reserve(b, len))
        return -1;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

/* xattrs of `path` (not followed) into the listing's buffer; -1 on any error
 * but "this filesystem has no xattrs". */
static int read_xattrs(const char *path, bytes_buf *out)
{
    char small[1024], *names = small;
    ssize_t size = llistxattr(path, small, sizeof small);
    if (size < 0 && errno == ERANGE) {
        ssize_t need = llistxattr(path, NULL, 0);
        if (need < 0 || !(names = malloc((size_t)need + 1)))
            return -1;
        size = llistxattr(path, names, (size_t)need);
    }
    if (size < 0) {
        if (names != small)
            free(names);
        return errno == ENOTSUP || errno == EOPNOTSUPP ? 0 : -1;
    }
    int err = 0;
    char value_small[512];
    for (ssize_t at = 0; at < size && !err;) {
        const char *name = names + at;
        size_t name_len = strlen(name);
        at += (ssize_t)name_len + 1;
        char *value = value_small;
        ssize_t value_len = lgetxattr(path, name, value_small, sizeof value_small);
        if (value_len < 0 && errno == ERANGE) {
            ssize_t need = lgetxattr(path, name, NULL, 0);
            if (need < 0 || !(value = malloc((size_t)need + 1)))
                err = -1;
            else
                value_len = lgetxattr(path, name, value, (size_t)need);
        }
        if (!err && (value_len < 0 || put_bytes(out, name, name_len) ||
                     put_bytes(out, value, (size_t)value_len)))
            err = -1;
        if (value != value_small)
            free(value);
    }
    if (names != small)
        free(names);
    return err;
}

/* The target of a symlink, or the bytes of a regular file of at most
 * inline_max bytes (read one byte more, to see a file that grew). */
static int read_entry_data(int dfd, const char *name, const struct stat *st, long inline_max,
                           bytes_buf *out, ssize_t *len)
{
    if (S_ISLNK(st->st_mode)) {
        if (buf_reserve(out, 4096 + 1))
            return -1;
        ssize_t got = readlinkat(dfd, name, out->data + out->len, 4096 + 1);
        if (got < 0 || got > 4096)
            return -1;
        *len = got;
        return 0;
    }
    if (!S_ISREG(st->st_mode) || st->st_size > inline_max)
        return 0;
    size_t want = (size_t)st->st_size + 1;
    if (buf_reserve(out, want))
        return -1;
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -1;
    size_t got = 0;
    while (got < want) {
        ssize_t n = read(fd, out->data + out->len + got, want - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (got != (size_t)st->st_size)
        return -1; /* changed size, or unreadable: the Python code says which */
    *len = (ssize_t)got;
    return 0;
}

static int list_entry(dir_listing *l, int dfd, const char *dir_path, size_t dir_len,
                      const char *name, long inline_max, char **full, size_t *full_room)
{
    if (l->count == l->room) {
        size_t room = l->room ? 2 * l->room : 64;
        dir_entry *items = realloc(l->items, room * sizeof *items);
        if (!items)
            return ENOMEM;
        l->items = items;
        l->room = room;
    }
    dir_entry *e = &l->items[l->count];
    memset(e, 0, sizeof *e);
    e->data_len = -1;
    size_t name_len = strlen(name);
    if (buf_reserve(&l->names, name_len))
        return ENOMEM;
    e->name_at = l->names.len;
    e->name_len = name_len;
    memcpy(l->names.data + l->names.len, name, name_len);
    l->names.len += name_len;
    l->count++;
    /* the full path, for the xattr calls (which have no *at() form) */
    size_t need = dir_len + 1 + name_len + 1;
    if (need > *full_room) {
        char *grown = realloc(*full, need);
        if (!grown)
            return ENOMEM;
        *full = grown;
        *full_room = need;
    }
    size_t at = dir_len;
    memcpy(*full, dir_path, dir_len);
    if (dir_len && dir_path[dir_len - 1] != '/')
        (*full)[at++] = '/';
    memcpy(*full + at, name, name_len + 1);
    size_t xattrs_before = l->xattrs.len;
    if (fstatat(dfd, name, &e->st, AT_SYMLINK_NOFOLLOW) < 0 ||
        read_xattrs(*full, &l->xattrs) < 0 ||
        read_entry_data(dfd, name, &e->st, inline_max, &l->data, &e->data_len) < 0) {
        e->failed = 1;
        l->xattrs.len = xattrs_before;
        e->data_len = -1;
        return 0;
    }
    e->xattr_at = xattrs_before;
    e->xattr_len = l->xattrs.len - xattrs_before;
    if (e->data_len >= 0) {
        e->data_at = l->data.len;
        l->data.len += (size_t)e->data_len;
    }
    return 0;
}

static int list_directory_nogil(const char *path, long inline_max, dir_listing *l)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno;
    DIR *dir = fdopendir(fd);
    if (!dir) {
        int err = errno;
        close(fd);
        return err;
    }
    size_t dir_len = strlen(path), full_room = 0;
    char *full = NULL;
    int err = 0;
    for (;;) {
        errno = 0;
        struct dirent *entry = readdir(dir);
        if (!entry) {
            err = errno;
            break;
        }
        const char *name = entry->d_name;
        if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
            continue;
        if ((err = list_entry(l, dirfd(dir), path, dir_len, name, inline_max, &full,
                              &full_room)))
            break;
    }
    free(full);
    closedir(dir);
    return err;
}

static PyObject *stat_object(const struct stat *st)
{
    PyObject *out = PyStructSequence_New(StatType);
    if (!out)
        return NULL;
    PyObject *items[10] = {
        PyLong_FromUnsignedLong((unsigned long)st->st_mode),
        PyLong_FromUnsignedLongLong((unsigned long long)st->st_ino),
        PyLong_FromUnsignedLongLong((unsigned long long)st->st_dev),
        PyLong_FromUnsignedLongLong((unsigned long long)st->st_nlink),
        PyLong_FromUnsignedLong((unsigned long)st->st_uid),
        PyLong_FromUnsignedLong((unsigned long)st->st_gid),
        PyLong_FromLongLong((long long)st->st_size),
        PyLong_FromUnsignedLongLong((unsigned long long)st->st_rdev),
        time_ns(&st->st_mtim),
        time_ns(&st->st_ctim),
    };
    int ok = 1;
    for (int i = 0; i < 10; i++) {
        if (!items[i])
            ok = 0;
        PyStructSequence_SET_ITEM(out, i, items[i]); /* NULLs are fine for the dealloc */
    }
    if (!ok)
        Py_CLEAR(out);
    return out;
}

static PyObject *xattr_dict(const char *data, size_t len)
{
    PyObject *out = PyDict_New();
    for (size_t at = 0; out && at < len;) {
        uint32_t name_len = 0, value_len = 0;
        for (int i = 0; i < 4; i++)
            name_len |= (uint32_t)(unsigned char)data[at + i] << (8 * i);
        const char *name = data + at + 4;
        at += 4 + name_len;
        for (int i = 0; i < 4; i++)
            value_len |= (uint32_t)(unsigned char)data[at + i] << (8 * i);
        const char *value = data + at + 4;
        at += 4 + value_len;
        PyObject *k = PyBytes_FromStringAndSize(name, name_len);
        PyObject *v = PyBytes_FromStringAndSize(value, value_len);
        if (!k || !v || PyDict_SetItem(out, k, v) < 0)
            Py_CLEAR(out);
        Py_XDECREF(k);
        Py_XDECREF(v);
    }
    return out;
}

/* list_directory(path: bytes, inline_max) -> [(name, full path, Stat, xattrs, data)]
 * in readdir order; for a failed entry Stat, xattrs and data are None (the
 * caller redoes it); data is the symlink target or the small file's bytes, or
 * None.  OSError when the directory itself cannot be listed. */
static PyObject *py_list_directory(PyObject *self, PyObject *args)
{
    const char *path;
    Py_ssize_t path_len;
    long inline_max;
    int err;
    dir_listing l = {0};
    if (!PyArg_ParseTuple(args, "y#l:list_directory", &path, &path_len, &inline_max))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    err = list_directory_nogil(path, inline_max, &l);
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (err) {
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PyTuple_GET_ITEM(args, 0));
        goto done;
    }
    if (!(out = PyList_New((Py_ssize_t)l.count)))
        goto done;
    int slash = path_len && path[path_len - 1] != '/';
    for (size_t i = 0; i < l.count; i++) {
        dir_entry *e = &l.items[i];
        PyObject *name = PyBytes_FromStringAndSize(l.names.data + e->name_at, e->name_len);
        PyObject *full = PyBytes_FromStringAndSize(NULL, path_len + slash + e->name_len);
        if (full) {
            char *f = PyBytes_AS_STRING(full);
            memcpy(f, path, (size_t)path_len);
            if (slash)
                f[path_len] = '/';
            memcpy(f + path_len + slash, l.names.data + e->name_at, e->name_len);
        }
        PyObject *st = NULL, *xattrs = NULL, *data = NULL, *item = NULL;
        if (e->failed) {
            st = Py_NewRef(Py_None);
            xattrs = Py_NewRef(Py_None);
            data = Py_NewRef(Py_None);
        } else {
            st = stat_object(&e->st);
            xattrs = xattr_dict(l.xattrs.data + e->xattr_at, e->xattr_len);
            data = e->data_len >= 0 ? PyBytes_FromStringAndSize(l.data.data + e->data_at,
                                                                e->data_len)
                                    : Py_NewRef(Py_None);
        }
        if (name && full && st && xattrs && data)
            item = PyTuple_Pack(5, name, full, st, xattrs, data);
        Py_XDECREF(name);
        Py_XDECREF(full);
        Py_XDECREF(st);
        Py_XDECREF(xattrs);
        Py_XDECREF(data);
        if (!item) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
done:
    free(l.items);
    free(l.names.data);
    free(l.xattrs.data);
    free(l.data.data);
    return out;
}

/* x8(enabled: bool | None = None) -> bool: whether SHA-512 blocks are hashed
 * eight at a time; with an argument, first switch it (on only where the CPU can). */
static PyObject *py_x8(PyObject *self, PyObject *args)
{
    PyObject *enable = Py_None;
    if (!PyArg_ParseTuple(args, "|O:x8", &enable))
        return NULL;
    if (enable != Py_None) {
        int on = PyObject_IsTrue(enable);
        if (on < 0)
            return NULL;
        use_x8 = on && sha512x8_available();
    }
    return PyBool_FromLong(use_x8);
}

static PyMethodDef methods[] = {
    {"x8", py_x8, METH_VARARGS,
     "x8(enabled=None) -> bool: SHA-512 eight blocks at a time (AVX-512); switch it."},
    {"digest_fd", py_digest_fd, METH_VARARGS,
     "digest_fd(fd, alg) -> (fs-verity digest, bytes read): fd from its position to EOF."},
    {"digest_buffer", py_digest_buffer, METH_VARARGS,
     "digest_buffer(data, alg) -> fs-verity digest of bytes in memory."},
    {"digest_paths", py_digest_paths, METH_VARARGS,
     "digest_paths(paths, alg, nofollow, dir_fd=AT_FDCWD) -> list of results or errnos."},
    {"list_directory", py_list_directory, METH_VARARGS,
     "list_directory(path, inline_max) -> [(name, path, Stat, xattrs, data)]."},
    {"fingerprint_tree", py_fingerprint_tree, METH_VARARGS,
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
    use_x8 = sha512x8_available();
    if (!StatType && !(StatType = PyStructSequence_NewType(&stat_desc))) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Stat", (PyObject *)StatType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
