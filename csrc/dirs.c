/* Directory streams: names taken from getdents64 one small chunk at a time, so an open listing
  costs a fixed few KiB whatever the directory's size (part of vmfs._native; see
  vmfs/_native_build.py and vmfs/driver/dirstream.py).

  Entry numbers (DIR_TELL / DIR_SEEK) count the names returned since the listing started, "."
  and ".." excluded. A seek needs a way back to entry n without keeping every name: the stream
  remembers the getdents64 cookie (d_off) at every `stride`-th entry, at most VMFS_DIR_MARKS of
  them; when they run out, every other one is dropped and the stride doubles. A seek goes to the
  nearest remembered cookie at or before n and skips forward from there. */

#define VMFS_DIR_CHUNK 8192
#define VMFS_DIR_MARKS 256
#define VMFS_DIR_STRIDE 256

struct vmfs_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    uint16_t d_reclen;
    uint8_t d_type;
    char d_name[];
};

struct vmfs_dir {
    int fd;
    int at_end;         /* getdents64 said there is nothing more */
    uint32_t pos;       /* next unread byte of buf */
    uint32_t end;       /* bytes of buf filled by the last getdents64 */
    uint64_t index;     /* entry number of the next name */
    int64_t cookie;     /* where the stream resumes at buf[pos]: d_off of the record before it */
    uint64_t stride;    /* mark[i] is the cookie of entry i * stride */
    uint32_t marks;     /* how many of mark[] hold cookies */
    int64_t mark[VMFS_DIR_MARKS];
    char buf[VMFS_DIR_CHUNK] __attribute__((aligned(8)));
};

/* The stream at the start of the listing (marks forgotten: the directory may have changed). */
static int vmfs_dir_restart(struct vmfs_dir *d) {
    if (lseek(d->fd, 0, SEEK_SET) < 0) return -errno;
    d->at_end = 0;
    d->pos = d->end = 0;
    d->index = 0;
    d->cookie = 0;
    d->stride = VMFS_DIR_STRIDE;
    d->marks = 1;
    d->mark[0] = 0;
    return 0;
}

static int vmfs_dir_init(struct vmfs_dir *d, int fd) {
    d->fd = fd;
    return vmfs_dir_restart(d);
}

/* One getdents64 into buf: the byte count (0 at the end), or -errno. */
static long vmfs_dir_fill(struct vmfs_dir *d) {
    long n;
    do {
        n = syscall(SYS_getdents64, d->fd, d->buf, sizeof d->buf);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    d->pos = 0;
    d->end = (uint32_t)n;
    if (n == 0) d->at_end = 1;
    return n;
}

/* Remember `cookie` as the way back to entry d->index if it falls on a mark. */
static void vmfs_dir_mark(struct vmfs_dir *d, int64_t cookie) {
    uint64_t i;
    if (d->index % d->stride) return;
    i = d->index / d->stride;
    if (i != d->marks) return;
    if (d->marks == VMFS_DIR_MARKS) {
        uint32_t j;
        for (j = 0; j < VMFS_DIR_MARKS / 2; j++) d->mark[j] = d->mark[2 * j];
        d->marks = VMFS_DIR_MARKS / 2;
        d->stride *= 2;
        if (d->index % d->stride || d->index / d->stride != d->marks) return;
    }
    d->mark[d->marks++] = cookie;
}

/* The next entry other than "." and "..", consumed: 1 and *out, 0 at the end, or -errno. */
static int vmfs_dir_next(struct vmfs_dir *d, struct vmfs_dirent64 **out) {
    for (;;) {
        struct vmfs_dirent64 *e;
        int64_t before;
        if (d->pos >= d->end) {
            long n;
            if (d->at_end) return 0;
            n = vmfs_dir_fill(d);
            if (n <= 0) return (int)n;
        }
        e = (struct vmfs_dirent64 *)(d->buf + d->pos);
        if (e->d_reclen == 0 || e->d_reclen > d->end - d->pos) return -EIO;
        before = d->cookie;
        d->pos += e->d_reclen;
        d->cookie = e->d_off;
        if (e->d_name[0] == '.' &&
            (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0)))
            continue;
        vmfs_dir_mark(d, before);
        d->index++;
        *out = e;
        return 1;
    }
}

/* DIR_READ: the next name and its NUL written at out (room for 256 bytes; device memory gets
   aligned accesses only): the name's length, 0 at the end, or -errno. */
static long vmfs_dir_read(struct vmfs_dir *d, char *out, int device) {
    struct vmfs_dirent64 *e;
    size_t len;
    int r = vmfs_dir_next(d, &e);
    if (r <= 0) return r;
    len = strnlen(e->d_name, 256);
    if (len > 255) return -ENAMETOOLONG;
    if (device)
        vmfs_copy_aligned(out, e->d_name, len + 1);
    else
        memcpy(out, e->d_name, len + 1);
    return (long)len;
}

/* DIR_SEEK: the next name read is entry `target`, or the stream is at the end if there are
   fewer entries. 0, or -errno. */
static int vmfs_dir_seek(struct vmfs_dir *d, uint64_t target) {
    uint64_t m = target / d->stride;
    if (m >= d->marks) m = d->marks - 1;
    if (target < d->index || d->index < m * d->stride) {
        if (lseek(d->fd, d->mark[m], SEEK_SET) < 0) return -errno;
        d->at_end = 0;
        d->pos = d->end = 0;
        d->index = m * d->stride;
        d->cookie = d->mark[m];
    }
    while (d->index < target) {
        struct vmfs_dirent64 *e;
        int r = vmfs_dir_next(d, &e);
        if (r <= 0) return r;
    }
    return 0;
}
