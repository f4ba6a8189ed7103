/*
 * cfsboot._native, part 2 of 2: tree walks (the module itself is in _native.c,
 * the shared declarations in _native.h).
 *
 *  - fingerprint_tree: the --cache "has anything changed?" walk, which stats
 *    every entry of the tree; in C that is a syscall per entry instead of
 *    ~7 us of interpreter work.
 *  - list_directory: one directory's entries for the tree scan (lstat,
 *    xattrs, symlink targets, small files' bytes), returned as Stat
 *    struct sequences and bytes.
 */
#include "_native.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

/* ---- reading directories --------------------------------------------------- */

/* The directory at `path` itself (never through a symlink), or NULL and *err. */
static DIR *open_directory(const char *path, int *err)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *dir = fd < 0 ? NULL : fdopendir(fd);
    if (!dir) {
        *err = errno;
        if (fd >= 0)
            close(fd);
    }
    return dir;
}

/* The next entry's name other than "." and "..", or NULL at the end (*err
 * set when reading failed). */
static const char *next_name(DIR *dir, int *err)
{
    for (;;) {
        errno = 0;
        struct dirent *entry = readdir(dir);
        if (!entry) {
            *err = errno;
            return NULL;
        }
        const char *name = entry->d_name;
        if (!(name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))))
            return name;
    }
}

/* ---- tree fingerprint ------------------------------------------------------ */

/* Mirrors cfsboot.tree.fingerprint.TreeFingerprint: the same little-endian
 * records, each directory's (its header, then its entries in readdir order)
 * hashed on its own, and the fingerprint the SHA-256 of the salt, the root's
 * record and the sorted directory digests.  Sorting makes the walk order
 * irrelevant, so directories are read by several threads at once. */

#define DIR_DIGEST 32

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

static void newer(struct timespec *newest, const struct timespec *t)
{
    if (t->tv_sec > newest->tv_sec || (t->tv_sec == newest->tv_sec && t->tv_nsec > newest->tv_nsec))
        *newest = *t;
}

static int fp_record(bytes_buf *out, const char *name, size_t name_len, const struct stat *st)
{
    if (cfs_buf_reserve(out, 72 + name_len))
        return -1;
    unsigned char *record = (unsigned char *)out->data + out->len;
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
    memcpy(record + 72, name, name_len);
    out->len += 72 + name_len;
    return 0;
}

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    path_stack todo;  /* directories not read yet */
    size_t reading;   /* directories being read */
    int err;          /* the first error, which stops everyone */
    bytes_buf digests; /* DIR_DIGEST bytes per directory read */
    struct timespec newest_ctime;
} shared_walk;

/* One directory: its digest, its subdirectories (as paths) into `found`. */
static int fp_directory(const char *path, bytes_buf *records, path_stack *found,
                        struct timespec *newest, unsigned char *digest)
{
    int err = 0;
    DIR *dir = open_directory(path, &err);
    if (!dir)
        return err;
    size_t path_len = strlen(path);
    int slash = path_len == 0 || path[path_len - 1] != '/';
    records->len = 0;
    if (cfs_buf_reserve(records, 8 + path_len)) {
        closedir(dir);
        return ENOMEM;
    }
    put_le((unsigned char *)records->data, 0xFFFFFFFFu, 4);
    put_le((unsigned char *)records->data + 4, path_len, 4);
    memcpy(records->data + 8, path, path_len);
    records->len = 8 + path_len;
    const char *name;
    while ((name = next_name(dir, &err))) {
        struct stat st;
        if (fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            err = errno;
            break;
        }
        size_t name_len = strlen(name);
        if (fp_record(records, name, name_len, &st) < 0) {
            err = ENOMEM;
            break;
        }
        newer(newest, &st.st_ctim);
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
            if (stack_push(found, child) < 0) {
                free(child);
                err = ENOMEM;
                break;
            }
        }
    }
    closedir(dir);
    if (!err)
        SHA256((unsigned char *)records->data, records->len, digest);
    return err;
}

static void *fp_worker(void *arg)
{
    shared_walk *w = arg;
    bytes_buf records = {0};
    path_stack found = {0};
    struct timespec newest = {0, 0};
    unsigned char digest[DIR_DIGEST];
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->err && w->todo.count == 0 && w->reading > 0)
            pthread_cond_wait(&w->wake, &w->lock);
        if (w->err || w->todo.count == 0)
            break; /* failed, or nothing left to read and nobody reading */
        char *path = w->todo.items[--w->todo.count];
        w->reading++;
        pthread_mutex_unlock(&w->lock);
        int err = fp_directory(path, &records, &found, &newest, digest);
        free(path);
        pthread_mutex_lock(&w->lock);
        w->reading--;
        if (!err && cfs_buf_reserve(&w->digests, DIR_DIGEST))
            err = ENOMEM;
        if (!err) {
            memcpy(w->digests.data + w->digests.len, digest, DIR_DIGEST);
            w->digests.len += DIR_DIGEST;
        }
        while (found.count) {
            char *child = found.items[--found.count];
            if (err || stack_push(&w->todo, child) < 0) {
                free(child);
                err = err ? err : ENOMEM;
            }
        }
        if (err && !w->err)
            w->err = err;
        pthread_cond_broadcast(&w->wake);
    }
    newer(&w->newest_ctime, &newest);
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->lock);
    free(records.data);
    free(found.items);
    return NULL;
}

static int compare_digests(const void *a, const void *b)
{
    return memcmp(a, b, DIR_DIGEST);
}

/* The walk on up to 4 threads (this one included); the fingerprint into out. */
static int fingerprint_walk(const char *root, const void *salt, size_t salt_len,
                            unsigned char *out, struct timespec *newest_ctime)
{
    struct stat st;
    if (lstat(root, &st) < 0)
        return errno;
    shared_walk w = {.err = 0, .reading = 0, .newest_ctime = st.st_ctim};
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.wake, NULL);
    bytes_buf head = {0};
    char *first = strdup(root);
    int err = 0;
    if (!first || stack_push(&w.todo, first) < 0 || fp_record(&head, "", 0, &st) < 0) {
        free(first);
        err = ENOMEM;
    }
    pthread_t threads[3];
    int started = 0;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    for (long i = 1; !err && i < (cpus < 4 ? cpus : 4); i++)
        if (pthread_create(&threads[started], NULL, fp_worker, &w) == 0)
            started++;
    if (!err)
        fp_worker(&w);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    err = err ? err : w.err;
    while (w.todo.count)
        free(w.todo.items[--w.todo.count]);
    free(w.todo.items);
    if (!err) {
        qsort(w.digests.data, w.digests.len / DIR_DIGEST, DIR_DIGEST, compare_digests);
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        unsigned int len = 0;
        if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ||
            !EVP_DigestUpdate(ctx, salt, salt_len) ||
            !EVP_DigestUpdate(ctx, head.data, head.len) ||
            !EVP_DigestUpdate(ctx, w.digests.data, w.digests.len) ||
            !EVP_DigestFinal_ex(ctx, out, &len))
            err = EIO;
        EVP_MD_CTX_free(ctx);
        *newest_ctime = w.newest_ctime;
    }
    free(head.data);
    free(w.digests.data);
    pthread_mutex_destroy(&w.lock);
    pthread_cond_destroy(&w.wake);
    return err;
}

/* fingerprint_tree(root: bytes, salt: bytes) -> (sha256 digest, newest ctime
 * seconds, nanoseconds); OSError when the tree cannot be read. */
PyObject *cfs_py_fingerprint_tree(PyObject *self, PyObject *args)
{
    const char *root;
    Py_buffer salt;
    int err;
    unsigned char digest[32];
    struct timespec newest = {0, 0};
    if (!PyArg_ParseTuple(args, "yy*:fingerprint_tree", &root, &salt))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    err = fingerprint_walk(root, salt.buf, (size_t)salt.len, digest, &newest);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&salt);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(y#Ll)", digest, (Py_ssize_t)sizeof digest, (long long)newest.tv_sec,
                         (long)newest.tv_nsec);
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

PyTypeObject *cfs_stat_type; /* created by PyInit__native */

static PyStructSequence_Field stat_fields[] = {
    {"st_mode", NULL}, {"st_ino", NULL},   {"st_dev", NULL},      {"st_nlink", NULL},
    {"st_uid", NULL},  {"st_gid", NULL},   {"st_size", NULL},     {"st_rdev", NULL},
    {"st_mtime_ns", NULL}, {"st_ctime_ns", NULL}, {NULL, NULL},
};

PyStructSequence_Desc cfs_stat_desc = {
    "cfsboot._native.Stat", "The lstat fields a tree scan uses (names as in os.stat_result).",
    stat_fields, 10,
};

static int put_u32(bytes_buf *b, size_t value)
{
    if (cfs_buf_reserve(b, 4))
        return -1;
    put_le((unsigned char *)b->data + b->len, value, 4);
    b->len += 4;
    return 0;
}

static int put_bytes(bytes_buf *b, const void *data, size_t len)
{
    if (put_u32(b, len) || cfs_buf_reserve(b, len))
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
        if (cfs_buf_reserve(out, 4096 + 1))
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
    if (cfs_buf_reserve(out, want))
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
    if (cfs_buf_reserve(&l->names, name_len))
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
    int err = 0;
    DIR *dir = open_directory(path, &err);
    if (!dir)
        return err;
    size_t dir_len = strlen(path), full_room = 0;
    char *full = NULL;
    const char *name;
    while ((name = next_name(dir, &err)))
        if ((err = list_entry(l, dirfd(dir), path, dir_len, name, inline_max, &full,
                              &full_room)))
            break;
    free(full);
    closedir(dir);
    return err;
}

static PyObject *stat_object(const struct stat *st)
{
    PyObject *out = PyStructSequence_New(cfs_stat_type);
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
        cfs_time_ns(&st->st_mtim),
        cfs_time_ns(&st->st_ctim),
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
PyObject *cfs_py_list_directory(PyObject *self, PyObject *args)
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
