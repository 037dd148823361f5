/* The driver's context shared by the Python engine and the native serve loop: the facts handed
  over from Python at start-up, the handle table, and each natively served command's checks
  and calls (part of vmfs._native; see vmfs/_native_build.py and vmfs/driver/native.py).

  Every number of the protocol (statuses, limits, layouts, open flags) and the request machine
  arrive in struct vmfs_facts from vmfs.wire and vmfs.fsm: nothing here restates them. */

enum { VMFS_IO_SYNC = 1, VMFS_IO_NOWAIT = 2, VMFS_IO_RING = 3 };
enum { VMFS_KIND_FREE = 0, VMFS_KIND_FILE = 1, VMFS_KIND_DIR = 2 };
enum {
    VMFS_NATIVE_NONE = 0, VMFS_NATIVE_READ, VMFS_NATIVE_WRITE, VMFS_NATIVE_STAT,
    VMFS_NATIVE_OPEN, VMFS_NATIVE_CLOSE, VMFS_NATIVE_SIZE, VMFS_NATIVE_DIR_OPEN,
    VMFS_NATIVE_DIR_READ, VMFS_NATIVE_DIR_CLOSE, VMFS_NATIVE_DIR_TELL, VMFS_NATIVE_DIR_SEEK,
    VMFS_NATIVE_DIR_REWIND, VMFS_NATIVE_DIR_CREATE, VMFS_NATIVE_DIR_REMOVE,
    VMFS_NATIVE_FILE_REMOVE
};
/* What serving one command natively gave: WOULD_BLOCK is a FILE_READ whose data is not in
   memory (nothing read, nothing changed): the loop may put it on the ring. */
enum { VMFS_PUNT = 0, VMFS_ANSWERED = 1, VMFS_WOULD_BLOCK = 2 };

static int vmfs_buffer_ok(uint64_t offset, uint64_t size, uint64_t share_size) {
    return size > 0 && offset < share_size && size <= share_size - offset;
}

/* -- the handle table: handle = generation << slot_bits | slot ---------------------------- */

static int64_t vmfs_handle_add(struct vmfs_ctx *c, int kind, int fd, int readable, int writable,
                               uint64_t dev, uint64_t ino) {
    struct vmfs_handles *t = &c->handles;
    struct vmfs_handle *h;
    uint32_t slot;
    if (!t->free_count) return -1;
    slot = t->free_fifo[t->free_first];
    t->free_first = (t->free_first + 1) % t->limit;
    t->free_count--;
    h = &t->entries[slot];
    h->fd = fd;
    h->kind = (uint8_t)kind;
    h->readable = (uint8_t)readable;
    h->writable = (uint8_t)writable;
    h->dev = dev;
    h->ino = ino;
    h->dir = NULL;
    h->io = VMFS_IO_RING;
    if (kind == VMFS_KIND_FILE) {
        /* How this file's data moves, learned once per filesystem. */
        if (dev != c->io_known_for || !c->io_known) {
            c->io_known_for = dev;
            c->io_known = !c->ring_available || vmfs_memory_fs(fd) ? VMFS_IO_SYNC : VMFS_IO_NOWAIT;
        }
        h->io = (uint8_t)c->io_known;
    }
    return ((int64_t)t->generation[slot] << t->slot_bits) | slot;
}

/* The slot of a live handle of this kind (0: any kind), or -1. */
static int vmfs_handle_slot(const struct vmfs_ctx *c, uint64_t handle, int kind) {
    const struct vmfs_handles *t = &c->handles;
    uint64_t slot;
    if (handle >> 31) return -1;
    slot = handle & ((1u << t->slot_bits) - 1);
    if (slot >= t->limit || t->entries[slot].kind == VMFS_KIND_FREE) return -1;
    if (kind && t->entries[slot].kind != kind) return -1;
    if ((handle >> t->slot_bits) != t->generation[slot]) return -1;
    return (int)slot;
}

/* Forget a slot's handle, freeing its listing: the next handle of the slot differs. Its
   descriptor, still open, for the caller to close. */
static int vmfs_forget(struct vmfs_ctx *c, int slot) {
    struct vmfs_handles *t = &c->handles;
    struct vmfs_handle *h = &t->entries[slot];
    int fd = h->fd;
    free(h->dir);
    h->dir = NULL;
    h->kind = VMFS_KIND_FREE;
    h->fd = -1;
    t->generation[slot] = (t->generation[slot] % t->generation_mask) + 1;
    t->free_fifo[(t->free_first + t->free_count) % t->limit] = (uint32_t)slot;
    t->free_count++;
    return fd;
}

/* Forget a slot's handle and close its descriptor: the close's result (0 or -errno). */
static int vmfs_release(struct vmfs_ctx *c, int slot) {
    return close(vmfs_forget(c, slot)) < 0 && errno != EINTR ? -errno : 0;
}

static void vmfs_release_slot(struct vmfs_ctx *c, int slot) {
    if (c->handles.entries[slot].kind != VMFS_KIND_FREE) vmfs_release(c, slot);
}

/* A directory handle for the open directory fd: the handle, or -status with fd closed. */
static int64_t vmfs_dir_open_handle(struct vmfs_ctx *c, int fd) {
    struct vmfs_dir *d = malloc(sizeof *d);
    int64_t handle;
    if (!d || vmfs_dir_init(d, fd) < 0) {
        free(d);
        close(fd);
        return -(int64_t)c->f.st_error;
    }
    handle = vmfs_handle_add(c, VMFS_KIND_DIR, fd, 1, 0, 0, 0);
    if (handle < 0) {
        free(d);
        close(fd);
        return -(int64_t)c->f.st_too_many_open_files;
    }
    c->handles.entries[handle & ((1u << c->handles.slot_bits) - 1)].dir = d;
    return handle;
}

/* -- paths ---------------------------------------------------------------------------------- */

/* The root-relative path ("." for the root) in a client's path buffer, NUL-terminated in out
   (max_path + 2 bytes), or -1: a bad or over-long buffer, an empty path, an over-long name. */
static long vmfs_share_path(const struct vmfs_ctx *c, uint64_t offset, uint64_t size, char *out) {
    char raw[size <= c->f.max_path ? size + 1 : 1];
    long n = 0;
    uint64_t i = 0;
    if (size > c->f.max_path || !vmfs_buffer_ok(offset, size, c->share_size)) return -1;
    if (c->device_memory)
        vmfs_copy_aligned(raw, c->share + offset, size);
    else
        memcpy(raw, c->share + offset, size);
    while (i < size && raw[i]) {
        uint64_t start, len;
        while (i < size && raw[i] == '/') i++;
        start = i;
        while (i < size && raw[i] && raw[i] != '/') i++;
        len = i - start;
        if (!len || (len == 1 && raw[start] == '.')) continue;
        if (len > c->f.max_name) return -1;
        if (n) out[n++] = '/';
        memcpy(out + n, raw + start, len);
        n += (long)len;
    }
    if (!n) {
        if (!size || !raw[0]) return -1; /* nothing before the NUL: no path at all */
        out[n++] = '.';
    }
    out[n] = 0;
    return n;
}

/* Whether FILE_OPEN must look before it opens. Opening is what acts on a device node, so a
   device node must never be opened; a FIFO or socket may be: the open does not block
   (O_NONBLOCK) and whatever is not a regular file is closed again and refused (docs/protocol.md
   "The commands"). Where the kernel itself refuses device nodes (a nodev mount, or a FAT
   filesystem, which has none) and the open stays on that mount (RESOLVE_NO_XDEV: see
   vmfs_open_resolve), no look is needed; anywhere else FILE_OPEN looks first. */
#define VMFS_MSDOS_MAGIC 0x4d44    /* vfat and msdos */
#define VMFS_EXFAT_MAGIC 0x2011BAB0
static int vmfs_open_looks(struct vmfs_ctx *c, int root) {
    struct statfs s;
    if (c->looks_for != root) {
        c->looks_for = root;
        c->looks = root >= 0 && !(fstatfs(root, &s) == 0 &&
                                    ((s.f_flags & ST_NODEV) || s.f_type == VMFS_MSDOS_MAGIC ||
                                     s.f_type == VMFS_EXFAT_MAGIC));
    }
    return c->looks;
}

/* Whether a parsed path has no ".." component: looked up from the root following no symlink,
   it cannot leave the root (vmfs.driver.paths.RESOLVE_DESCENDING). */
static int vmfs_path_descends(const char *path) {
    const char *s = path;
    while ((s = strstr(s, ".."))) {
        if ((s == path || s[-1] == '/') && (s[2] == 0 || s[2] == '/')) return 0;
        s += 2;
    }
    return 1;
}

/* How FILE_OPEN's first open resolves its path: inside the root (without the kernel's scoping
   when the path only descends), and, when it made no look, without leaving the root's mount (a
   path that would is opened again by vmfs_open_again). */
static uint64_t vmfs_open_resolve(struct vmfs_ctx *c, int root, const char *path) {
    uint64_t mount = vmfs_open_looks(c, root) ? 0 : RESOLVE_NO_XDEV;
    return (vmfs_path_descends(path) ? c->f.resolve_descending : c->f.resolve) | mount;
}

/* What FILE_OPEN would open is not a regular file (a directory, device node, FIFO or socket),
   looked at without opening it. A missing or refused path is not: the open itself reports it. */
static int vmfs_not_regular(const struct vmfs_ctx *c, int root, const char *path) {
    struct stat st;
    int fd = vmfs_openat2(root, path, O_PATH | O_CLOEXEC, 0, c->f.resolve);
    int special;
    if (fd < 0) return 0;
    special = fstat(fd, &st) == 0 && !S_ISREG(st.st_mode);
    close(fd);
    return special;
}

/* -- each command's checks, in the protocol's order: 0 to go on, else the status ------------ */

static uint32_t vmfs_check_transfer(const struct vmfs_ctx *c, const uint64_t *p, int writing,
                                    int *slot) {
    const struct vmfs_handle *h;
    if (!vmfs_buffer_ok(p[2], p[3], c->share_size)) return c->f.st_invalid_buffer;
    *slot = vmfs_handle_slot(c, p[0], VMFS_KIND_FILE);
    if (*slot < 0) return c->f.st_invalid_fd;
    h = &c->handles.entries[*slot];
    if (writing ? !h->writable : !h->readable)
        return writing ? c->f.st_invalid_write : c->f.st_invalid_read;
    if (p[1] >= c->f.max_file_offset) return c->f.st_error;
    return 0;
}

static uint32_t vmfs_check_stat(const struct vmfs_ctx *c, const uint64_t *p, char *path) {
    if (vmfs_share_path(c, p[0], p[1], path) < 0) return c->f.st_invalid_path;
    if (!vmfs_buffer_ok(p[2], p[3], c->share_size) || p[3] < c->f.stat_size)
        return c->f.st_invalid_buffer;
    return 0;
}

/* FILE_OPEN up to the open: the path, the flags, room in the table, no special file. */
static uint32_t vmfs_check_open(struct vmfs_ctx *c, int root, const uint64_t *p, char *path,
                                uint64_t *linux_flags, uint64_t *mode) {
    uint64_t access = p[2] & c->f.open_access_mask;
    int create = (p[2] & c->f.open_create) != 0;
    if (vmfs_share_path(c, p[0], p[1], path) < 0) return c->f.st_invalid_path;
    if ((p[2] & ~c->f.open_known) || access == 3) return c->f.st_error;
    if (!c->handles.free_count) return c->f.st_too_many_open_files;
    if (vmfs_open_looks(c, root) && vmfs_not_regular(c, root, path)) return c->f.st_error;
    *linux_flags = c->f.open_base | access | (create ? O_CREAT : 0); /* 0/1/2 are Linux's too */
    *mode = create ? c->f.file_mode : 0; /* openat2 refuses a mode without O_CREAT */
    return 0;
}

/* FILE_OPEN after its first open failed with err: a symlink met by a lookup that follows none
   is followed by the scoped one; then, if no look was made, a path that names something other
   than a regular file is refused as one (-EISDIR: ERROR, the protocol's answer for every such
   kind), one that crosses into another mount is looked at and opened across it; any other
   failure stands. A descriptor (>= 0) or -errno. */
static int vmfs_open_again(struct vmfs_ctx *c, int root, const char *path, uint64_t flags,
                           uint64_t mode, int err) {
    int looks = vmfs_open_looks(c, root);
    if (err == ELOOP && vmfs_path_descends(path)) {
        /* a symlink on the way: the scoped lookup follows it, inside the root */
        int fd = vmfs_openat2(root, path, flags, mode,
                              c->f.resolve | (looks ? 0 : RESOLVE_NO_XDEV));
        if (fd >= 0) return fd;
        err = -fd;
    }
    if (looks) return -err; /* it looked before it opened */
    if (vmfs_not_regular(c, root, path)) return -EISDIR;
    if (err != EXDEV) return -err;
    return vmfs_openat2(root, path, flags, mode, c->f.resolve);
}

/* FILE_OPEN after a successful open: a handle (>= 0), or -status with fd closed. */
static int64_t vmfs_open_finish(struct vmfs_ctx *c, int fd, uint64_t flags) {
    struct stat st;
    uint64_t access = flags & c->f.open_access_mask;
    int64_t handle;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -(int64_t)c->f.st_error;
    }
    handle = vmfs_handle_add(c, VMFS_KIND_FILE, fd, access != 1, access != 0, st.st_dev, st.st_ino);
    if (handle < 0) {
        close(fd);
        return -(int64_t)c->f.st_too_many_open_files;
    }
    return handle;
}

/* FILE_CLOSE and DIR_CLOSE whole: the status. */
static uint32_t vmfs_close_handle(struct vmfs_ctx *c, uint64_t handle, int kind) {
    int slot = vmfs_handle_slot(c, handle, kind);
    if (slot < 0) return c->f.st_invalid_fd;
    return vmfs_release(c, slot) < 0 && kind == VMFS_KIND_FILE ? c->f.st_error : 0;
}

/* The 17 u64 of the protocol's stat record from a statx. */
static void vmfs_stat_fill(const struct statx *sx, uint64_t *out) {
    out[0] = makedev(sx->stx_dev_major, sx->stx_dev_minor);
    out[1] = sx->stx_ino;
    out[2] = sx->stx_mode;
    out[3] = sx->stx_nlink;
    out[4] = sx->stx_uid;
    out[5] = sx->stx_gid;
    out[6] = makedev(sx->stx_rdev_major, sx->stx_rdev_minor);
    out[7] = sx->stx_size;
    out[8] = sx->stx_blksize;
    out[9] = sx->stx_blocks;
    out[10] = (uint64_t)sx->stx_atime.tv_sec;
    out[11] = (uint64_t)sx->stx_mtime.tv_sec;
    out[12] = (uint64_t)sx->stx_ctime.tv_sec;
    out[13] = sx->stx_atime.tv_nsec;
    out[14] = sx->stx_mtime.tv_nsec;
    out[15] = sx->stx_ctime.tv_nsec;
    out[16] = sx->stx_blocks * 512;
}

/* Copy the record into the share (aligned copies on device memory). */
static void vmfs_stat_out(const struct vmfs_ctx *c, uint64_t offset, const struct statx *sx) {
    uint64_t record[17];
    vmfs_stat_fill(sx, record);
    if (c->device_memory)
        vmfs_copy_aligned(c->share + offset, record, sizeof record);
    else
        memcpy(c->share + offset, record, sizeof record);
}

/* -- serving one command natively ------------------------------------------------------------
   ANSWERED with *status 0 and *data, or PUNT: nothing the client could see has changed, and the
   Python engine serves the command (its checks are these very functions; the call goes through
   io_uring or fails there, and Python turns errnos into statuses). Every check that fails also
   punts, so refusals are decided and logged in one place. */

static int vmfs_native_transfer(struct vmfs_ctx *c, const uint64_t *p, int writing,
                                uint64_t *data) {
    struct vmfs_handle *h;
    uint64_t size = p[3];
    char *buf;
    long done;
    int slot = -1;
    if (vmfs_check_transfer(c, p, writing, &slot)) return VMFS_PUNT;
    h = &c->handles.entries[slot];
    buf = (char *)c->share + p[2];
    if (writing && h->io != VMFS_IO_SYNC) return VMFS_PUNT;
    if (h->io == VMFS_IO_RING) return VMFS_WOULD_BLOCK;
    if (c->device_memory && size > c->bounce_size) return VMFS_PUNT;
    if (!writing && size > c->f.max_file_offset - 1 - p[1])
        size = c->f.max_file_offset - 1 - p[1]; /* no file reaches that far: end of file */
    if (writing)
        done = c->device_memory ? vmfs_pwrite_bounce(h->fd, c->bounce, buf, size, p[1])
                                : vmfs_pwrite_full(h->fd, buf, size, p[1]);
    else {
        int flags = h->io == VMFS_IO_NOWAIT ? RWF_NOWAIT : 0;
        done = c->device_memory ? vmfs_pread_bounce(h->fd, c->bounce, buf, size, p[1], flags)
                                : vmfs_pread_full(h->fd, buf, size, p[1], flags);
        if (done == -EOPNOTSUPP && flags) h->io = VMFS_IO_RING;
        if (done == -EAGAIN || done == -EOPNOTSUPP) return VMFS_WOULD_BLOCK;
    }
    if (done < 0) return VMFS_PUNT;
    *data = (uint64_t)done;
    return VMFS_ANSWERED;
}

static int vmfs_native_stat(struct vmfs_ctx *c, const uint64_t *p) {
    char path[c->f.max_path + 2];
    struct statx sx;
    int fd;
    if (c->root_fd < 0 || vmfs_check_stat(c, p, path)) return VMFS_PUNT;
    fd = vmfs_openat2(c->root_fd, path, O_PATH | O_CLOEXEC, 0, c->f.resolve);
    if (fd < 0) return VMFS_PUNT;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx) < 0) {
        close(fd);
        return VMFS_PUNT;
    }
    close(fd);
    vmfs_stat_out(c, p[2], &sx);
    return VMFS_ANSWERED;
}

static int vmfs_native_open(struct vmfs_ctx *c, const uint64_t *p, uint64_t *data) {
    char path[c->f.max_path + 2];
    uint64_t flags, mode, resolve;
    int64_t handle;
    int fd;
    if (c->root_fd < 0 || vmfs_check_open(c, c->root_fd, p, path, &flags, &mode)) return VMFS_PUNT;
    resolve = vmfs_open_resolve(c, c->root_fd, path);
    if (!c->memory_root) {
        if (flags & O_CREAT) return VMFS_PUNT; /* RESOLVE_CACHED refuses O_CREAT: the ring */
        resolve |= RESOLVE_CACHED;              /* a lookup that would wait for the disk punts */
    }
    fd = vmfs_openat2_once(c->root_fd, path, flags, mode, resolve);
    if (fd < 0) return VMFS_PUNT;
    handle = vmfs_open_finish(c, fd, p[2]);
    if (handle < 0) return VMFS_PUNT; /* not a regular file, or no room: Python says which */
    *data = (uint64_t)handle;
    return VMFS_ANSWERED;
}

static int vmfs_native_size(struct vmfs_ctx *c, const uint64_t *p, uint64_t *data) {
    struct statx sx;
    int slot = vmfs_handle_slot(c, p[0], VMFS_KIND_FILE);
    if (slot < 0) return VMFS_PUNT;
    if (statx(c->handles.entries[slot].fd, "", AT_EMPTY_PATH, STATX_SIZE, &sx) < 0)
        return VMFS_PUNT;
    *data = sx.stx_size;
    return VMFS_ANSWERED;
}

static int vmfs_native_dir_open(struct vmfs_ctx *c, const uint64_t *p, uint64_t *data) {
    char path[c->f.max_path + 2];
    int64_t handle;
    int fd;
    if (c->root_fd < 0 || !c->handles.free_count) return VMFS_PUNT;
    if (vmfs_share_path(c, p[0], p[1], path) < 0) return VMFS_PUNT;
    fd = vmfs_openat2_once(c->root_fd, path, c->f.dir_open_flags, 0,
                           c->f.resolve | (c->memory_root ? 0 : RESOLVE_CACHED));
    if (fd < 0) return VMFS_PUNT;
    handle = vmfs_dir_open_handle(c, fd);
    if (handle < 0) return VMFS_PUNT; /* nothing is left open: Python says why */
    *data = (uint64_t)handle;
    return VMFS_ANSWERED;
}

static struct vmfs_dir *vmfs_listing(const struct vmfs_ctx *c, uint64_t handle) {
    int slot = vmfs_handle_slot(c, handle, VMFS_KIND_DIR);
    return slot < 0 ? NULL : c->handles.entries[slot].dir;
}

/* DIR_READ: the next name, or END_OF_DIRECTORY; a failing refill consumes nothing. */
static int vmfs_native_dir_read(struct vmfs_ctx *c, const uint64_t *p, uint32_t *status,
                                uint64_t *data) {
    struct vmfs_dir *d;
    long length;
    if (!vmfs_buffer_ok(p[1], p[2], c->share_size) || p[2] < c->f.dir_min_buffer)
        return VMFS_PUNT;
    if (!(d = vmfs_listing(c, p[0]))) return VMFS_PUNT;
    length = vmfs_dir_read(d, (char *)c->share + p[1], c->device_memory);
    if (length < 0) return VMFS_PUNT;
    if (!length) *status = c->f.st_end_of_directory;
    *data = (uint64_t)length;
    return VMFS_ANSWERED;
}

/* DIR_CREATE, DIR_REMOVE, FILE_REMOVE on a name in its parent, resolved inside the root. Only
   the plain case is taken: the root itself, a final "..", and every failure go to Python
   (a failed mkdirat or unlinkat changed nothing). */
static int vmfs_native_name(struct vmfs_ctx *c, const uint64_t *p, int kind) {
    char path[c->f.max_path + 2];
    const char *parent = ".", *name;
    char *slash;
    int pfd, ret;
    long n;
    if (c->root_fd < 0 || (n = vmfs_share_path(c, p[0], p[1], path)) < 0) return VMFS_PUNT;
    if (n == 1 && path[0] == '.') return VMFS_PUNT;
    slash = strrchr(path, '/');
    if (slash) {
        *slash = 0;
        parent = path;
        name = slash + 1;
    } else {
        name = path;
    }
    if (!strcmp(name, "..")) return VMFS_PUNT;
    pfd = vmfs_openat2_once(c->root_fd, parent, O_PATH | O_DIRECTORY | O_CLOEXEC, 0,
                            c->f.resolve | (c->memory_root ? 0 : RESOLVE_CACHED));
    if (pfd < 0) return VMFS_PUNT;
    if (kind == VMFS_NATIVE_DIR_CREATE)
        ret = mkdirat(pfd, name, (mode_t)c->f.dir_mode);
    else
        ret = unlinkat(pfd, name, kind == VMFS_NATIVE_DIR_REMOVE ? AT_REMOVEDIR : 0);
    close(pfd);
    return ret < 0 ? VMFS_PUNT : VMFS_ANSWERED;
}

/* The start of serving a command natively: its kind, journalled as started, or VMFS_NATIVE_NONE
   when this code does not take it (nothing changed). */
static int vmfs_native_start(struct vmfs_ctx *c, uint64_t index, uint64_t id, uint64_t cmd,
                             const uint64_t *p) {
    int kind = cmd < c->f.num_commands ? c->native[cmd] : VMFS_NATIVE_NONE;
    if (kind == VMFS_NATIVE_NONE) return kind;
    if ((kind == VMFS_NATIVE_CLOSE && vmfs_handle_slot(c, p[0], VMFS_KIND_FILE) < 0) ||
        (kind == VMFS_NATIVE_DIR_CLOSE && vmfs_handle_slot(c, p[0], VMFS_KIND_DIR) < 0))
        return VMFS_NATIVE_NONE; /* INVALID_FD: the refusal is Python's to answer and log */
    if (c->journal) {
        uint64_t *e = c->journal + (index % c->f.capacity) * c->f.journal_words;
        e[0] = index + 1;
        e[1] = c->f.journal_started;
        e[2] = e[3] = e[4] = 0;
    }
    if (c->crash_on_id && id == c->crash_on_id) _exit(c->crash_exit_code);
    return kind;
}

/* Serve a started command of this kind at once. */
static int vmfs_native_run(struct vmfs_ctx *c, int kind, const uint64_t *p, uint32_t *status,
                           uint64_t *data) {
    int answered;
    *status = 0;
    *data = 0;
    switch (kind) {
    case VMFS_NATIVE_READ: answered = vmfs_native_transfer(c, p, 0, data); break;
    case VMFS_NATIVE_WRITE: answered = vmfs_native_transfer(c, p, 1, data); break;
    case VMFS_NATIVE_STAT: answered = vmfs_native_stat(c, p); break;
    case VMFS_NATIVE_OPEN: answered = vmfs_native_open(c, p, data); break;
    case VMFS_NATIVE_SIZE: answered = vmfs_native_size(c, p, data); break;
    case VMFS_NATIVE_CLOSE:
        *status = vmfs_close_handle(c, p[0], VMFS_KIND_FILE);
        answered = VMFS_ANSWERED;
        break;
    case VMFS_NATIVE_DIR_CLOSE:
        *status = vmfs_close_handle(c, p[0], VMFS_KIND_DIR);
        answered = VMFS_ANSWERED;
        break;
    case VMFS_NATIVE_DIR_OPEN: answered = vmfs_native_dir_open(c, p, data); break;
    case VMFS_NATIVE_DIR_READ: answered = vmfs_native_dir_read(c, p, status, data); break;
    case VMFS_NATIVE_DIR_TELL: {
        struct vmfs_dir *d = vmfs_listing(c, p[0]);
        if (d) *data = d->index;
        answered = d ? VMFS_ANSWERED : VMFS_PUNT;
        break;
    }
    case VMFS_NATIVE_DIR_SEEK: {
        struct vmfs_dir *d = vmfs_listing(c, p[0]);
        answered = d && (int64_t)p[1] >= 0 && vmfs_dir_seek(d, p[1]) == 0 ? VMFS_ANSWERED
                                                                           : VMFS_PUNT;
        break;
    }
    case VMFS_NATIVE_DIR_REWIND: {
        struct vmfs_dir *d = vmfs_listing(c, p[0]);
        answered = d && vmfs_dir_restart(d) == 0 ? VMFS_ANSWERED : VMFS_PUNT;
        break;
    }
    case VMFS_NATIVE_DIR_CREATE:
    case VMFS_NATIVE_DIR_REMOVE:
    case VMFS_NATIVE_FILE_REMOVE: answered = vmfs_native_name(c, p, kind); break;
    default: answered = VMFS_PUNT;
    }
    return answered;
}

/* Serve the command whose parameters are p, if this native code takes it. */
static int vmfs_native_command(struct vmfs_ctx *c, uint64_t index, uint64_t id, uint64_t cmd,
                               const uint64_t *p, uint32_t *status, uint64_t *data) {
    int kind = vmfs_native_start(c, index, id, cmd, p);
    *status = 0;
    *data = 0;
    return kind == VMFS_NATIVE_NONE ? VMFS_PUNT : vmfs_native_run(c, kind, p, status, data);
}
