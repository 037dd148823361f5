"""cffi (API mode) build of vmfs._native: liburing, openat2, and shared-memory primitives.

Built at install time against the system's liburing headers (Debian: liburing-dev). The small C
helpers below exist so one Python call does one whole step (prep + tag, or reap a batch), and so
index words and device memory get the access widths and memory ordering the protocol requires.
"""

from cffi import FFI

CDEF = r"""
struct io_uring { ...; };
struct io_uring_probe;
struct open_how { uint64_t flags; uint64_t mode; uint64_t resolve; };
struct statx_timestamp { int64_t tv_sec; uint32_t tv_nsec; ...; };
struct statx {
    uint32_t stx_mask; uint32_t stx_blksize; uint64_t stx_attributes;
    uint32_t stx_nlink; uint32_t stx_uid; uint32_t stx_gid; uint16_t stx_mode;
    uint64_t stx_ino; uint64_t stx_size; uint64_t stx_blocks;
    struct statx_timestamp stx_atime; struct statx_timestamp stx_ctime;
    struct statx_timestamp stx_mtime;
    uint32_t stx_rdev_major; uint32_t stx_rdev_minor;
    uint32_t stx_dev_major; uint32_t stx_dev_minor;
    ...;
};

#define IORING_SETUP_SINGLE_ISSUER ...
#define IORING_SETUP_COOP_TASKRUN ...
#define IORING_SETUP_DEFER_TASKRUN ...
#define IORING_OP_LAST ...
#define RESOLVE_IN_ROOT ...
#define RESOLVE_NO_MAGICLINKS ...
#define RESOLVE_BENEATH ...
#define AT_EMPTY_PATH ...
#define AT_REMOVEDIR ...
#define AT_FDCWD ...
#define STATX_BASIC_STATS ...
#define RESOLVE_CACHED ...
#define RWF_NOWAIT ...

int vmfs_ring_init(struct io_uring *ring, unsigned entries, unsigned flags);
void io_uring_queue_exit(struct io_uring *ring);
int io_uring_submit(struct io_uring *ring);
int io_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr);
int io_uring_register_eventfd(struct io_uring *ring, int fd);
unsigned io_uring_sq_space_left(struct io_uring *ring);
int vmfs_ring_fd(struct io_uring *ring);

int vmfs_opcode_supported(int op);

int vmfs_prep_read(struct io_uring *r, int fd, void *buf, unsigned n, uint64_t off, uint64_t tag);
int vmfs_prep_write(struct io_uring *r, int fd, void *buf, unsigned n, uint64_t off, uint64_t tag);
int vmfs_prep_openat2(struct io_uring *r, int dfd, const char *path, struct open_how *how,
                      uint64_t tag);
int vmfs_prep_close(struct io_uring *r, int fd, uint64_t tag);
int vmfs_prep_statx(struct io_uring *r, int dfd, const char *path, int flags, unsigned mask,
                    struct statx *out, uint64_t tag);
int vmfs_prep_fsync(struct io_uring *r, int fd, uint64_t tag);
int vmfs_prep_ftruncate(struct io_uring *r, int fd, uint64_t length, uint64_t tag);
int vmfs_prep_renameat(struct io_uring *r, int olddfd, const char *oldpath, int newdfd,
                       const char *newpath, uint64_t tag);
int vmfs_prep_unlinkat(struct io_uring *r, int dfd, const char *path, int flags, uint64_t tag);
int vmfs_prep_mkdirat(struct io_uring *r, int dfd, const char *path, unsigned mode, uint64_t tag);
int vmfs_prep_nop(struct io_uring *r, uint64_t tag);

int vmfs_reap(struct io_uring *r, uint64_t *tags, int32_t *results, int max);
int vmfs_wait(struct io_uring *r, unsigned wait_nr);

int vmfs_openat2(int dfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
int vmfs_openat2_once(int dfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
int vmfs_statx(int dfd, const char *path, int flags, unsigned mask, struct statx *out);

uint64_t vmfs_load_acquire(void *addr);
void vmfs_store_release(void *addr, uint64_t value);
void vmfs_full_barrier(void);
void vmfs_copy_aligned(void *dst, const void *src, size_t n);
void vmfs_store_byte(void *addr, uint8_t value);

#define MS_RDONLY ...
#define MS_NOSUID ...
#define MS_NODEV ...
#define MS_NOEXEC ...
#define MS_SYNCHRONOUS ...
#define MNT_DETACH ...
int vmfs_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
               const char *data);
int vmfs_umount2(const char *target, int flags);
int vmfs_loop_attach(const char *path, uint64_t offset, uint64_t sizelimit, int read_only,
                     int *number);
long vmfs_fs_magic(int fd);
long vmfs_pread_full(int fd, char *buf, size_t n, uint64_t pos, int flags);
long vmfs_pwrite_full(int fd, const char *buf, size_t n, uint64_t pos);
long vmfs_pread_bounce(int fd, char *bounce, char *share, size_t n, uint64_t pos, int flags);
long vmfs_pwrite_bounce(int fd, char *bounce, const char *share, size_t n, uint64_t pos);
int vmfs_stat_record(int dfd, const char *path, uint64_t resolve, uint64_t *out);
"""

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/loop.h>
#include <linux/openat2.h>
#include <liburing.h>

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef RESOLVE_CACHED
#define RESOLVE_CACHED 0x20
#endif
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif
/* Newer kernels than the liburing headers know: numbers from the kernel's io_uring ABI. */
#define VMFS_IORING_OP_FTRUNCATE 55

static int vmfs_ring_init(struct io_uring *ring, unsigned entries, unsigned flags) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags;
    return io_uring_queue_init_params(entries, ring, &p);
}

static int vmfs_ring_fd(struct io_uring *ring) { return ring->ring_fd; }

static int vmfs_opcode_supported(int op) {
    struct io_uring_probe *probe = io_uring_get_probe();
    int ok;
    if (!probe) return -1;
    ok = io_uring_opcode_supported(probe, op);
    io_uring_free_probe(probe);
    return ok;
}

#define VMFS_SQE(r) struct io_uring_sqe *sqe = io_uring_get_sqe(r); if (!sqe) return -EBUSY

static int vmfs_prep_read(struct io_uring *r, int fd, void *buf, unsigned n, uint64_t off,
                          uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_read(sqe, fd, buf, n, off);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

static int vmfs_prep_write(struct io_uring *r, int fd, void *buf, unsigned n, uint64_t off,
                           uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_write(sqe, fd, buf, n, off);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

static int vmfs_prep_openat2(struct io_uring *r, int dfd, const char *path, struct open_how *how,
                             uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_openat2(sqe, dfd, path, how);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

static int vmfs_prep_close(struct io_uring *r, int fd, uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

static int vmfs_prep_statx(struct io_uring *r, int dfd, const char *path, int flags,
                           unsigned mask, struct statx *out, uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_statx(sqe, dfd, path, flags, mask, out);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

static int vmfs_prep_fsync(struct io_uring *r, int fd, uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_fsync(sqe, fd, 0);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

static int vmfs_prep_ftruncate(struct io_uring *r, int fd, uint64_t length, uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_rw(VMFS_IORING_OP_FTRUNCATE, sqe, fd, 0, 0, length);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

static int vmfs_prep_renameat(struct io_uring *r, int olddfd, const char *oldpath, int newdfd,
                              const char *newpath, uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_renameat(sqe, olddfd, oldpath, newdfd, newpath, 0);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

static int vmfs_prep_unlinkat(struct io_uring *r, int dfd, const char *path, int flags,
                              uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_unlinkat(sqe, dfd, path, flags);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

static int vmfs_prep_mkdirat(struct io_uring *r, int dfd, const char *path, unsigned mode,
                             uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_mkdirat(sqe, dfd, path, mode);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

static int vmfs_prep_nop(struct io_uring *r, uint64_t tag) {
    VMFS_SQE(r);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

/* Copy up to max completions out of the CQ ring and mark them seen: one call per batch. */
static int vmfs_reap(struct io_uring *r, uint64_t *tags, int32_t *results, int max) {
    struct io_uring_cqe *cqe;
    unsigned head;
    int n = 0;
    io_uring_for_each_cqe(r, head, cqe) {
        if (n == max) break;
        tags[n] = cqe->user_data;
        results[n] = cqe->res;
        n++;
    }
    io_uring_cq_advance(r, n);
    return n;
}

static int vmfs_wait(struct io_uring *r, unsigned wait_nr) {
    struct io_uring_cqe *cqe;
    int ret;
    do {
        ret = io_uring_wait_cqes(r, &cqe, wait_nr, NULL, NULL);
    } while (ret == -EINTR);
    return ret;
}

static int vmfs_openat2(int dfd, const char *path, uint64_t flags, uint64_t mode,
                        uint64_t resolve) {
    struct open_how how;
    long ret;
    memset(&how, 0, sizeof how);
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    do {
        ret = syscall(SYS_openat2, dfd, path, &how, sizeof how);
    } while (ret < 0 && (errno == EINTR || errno == EAGAIN));
    return ret < 0 ? -errno : (int)ret;
}

/* One attempt, EAGAIN included: with RESOLVE_CACHED it means "not in the dcache, use io_uring". */
static int vmfs_openat2_once(int dfd, const char *path, uint64_t flags, uint64_t mode,
                             uint64_t resolve) {
    struct open_how how;
    long ret;
    memset(&how, 0, sizeof how);
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    do {
        ret = syscall(SYS_openat2, dfd, path, &how, sizeof how);
    } while (ret < 0 && errno == EINTR);
    return ret < 0 ? -errno : (int)ret;
}

static int vmfs_statx(int dfd, const char *path, int flags, unsigned mask, struct statx *out) {
    return statx(dfd, path, flags, mask, out) < 0 ? -errno : 0;
}

/* Index words: single aligned 64-bit accesses with acquire/release ordering (PROTOCOL 2.2). */
static uint64_t vmfs_load_acquire(void *addr) {
    return __atomic_load_n((uint64_t *)addr, __ATOMIC_ACQUIRE);
}

static void vmfs_store_release(void *addr, uint64_t value) {
    __atomic_store_n((uint64_t *)addr, value, __ATOMIC_RELEASE);
}

static void vmfs_full_barrier(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static void vmfs_store_byte(void *addr, uint8_t value) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    *(volatile uint8_t *)addr = value;
}

/* Copy for device memory: naturally aligned accesses only, each source byte read once.
   8-byte words where both addresses are 8-aligned, bytes elsewhere (PROTOCOL 2.7). */
static void vmfs_copy_aligned(void *dst, const void *src, size_t n) {
    volatile uint8_t *d = dst;
    const volatile uint8_t *s = src;
    if ((((uintptr_t)d ^ (uintptr_t)s) & 7) == 0) {
        while (n && ((uintptr_t)d & 7)) { *d++ = *s++; n--; }
        while (n >= 8) {
            *(volatile uint64_t *)d = *(const volatile uint64_t *)s;
            d += 8; s += 8; n -= 8;
        }
    }
    while (n) { *d++ = *s++; n--; }
}

/* mount(2) and umount2(2) without a shell: the driver mounts on INITIALISE (PROTOCOL 4). */
static int vmfs_mount(const char *source, const char *target, const char *fstype,
                      unsigned long flags, const char *data) {
    return mount(source, target, fstype, flags, data) < 0 ? -errno : 0;
}

static int vmfs_umount2(const char *target, int flags) {
    return umount2(target, flags) < 0 ? -errno : 0;
}

/* Attach path (at offset, sizelimit 0 = to the end) to a free loop device with one
   LOOP_CONFIGURE (Linux >= 5.8). The device is autoclear: it detaches itself when its last
   user goes, so the returned fd must stay open until the filesystem is mounted on it, and an
   unmount frees it. Returns the loop fd and sets *number, or -errno. */
static int vmfs_loop_attach(const char *path, uint64_t offset, uint64_t sizelimit,
                            int read_only, int *number) {
    int mode = (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    int backing, ctl, loop = -1, n = -1, err = 0, attempt;
    char name[32];
    backing = open(path, mode);
    if (backing < 0) return -errno;
    ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) { err = -errno; close(backing); return err; }
    for (attempt = 0; attempt < 16; attempt++) {
        struct loop_config cfg;
        n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) { err = -errno; break; }
        snprintf(name, sizeof name, "/dev/loop%d", n);
        loop = open(name, mode);
        if (loop < 0) { err = -errno; break; }
        memset(&cfg, 0, sizeof cfg);
        cfg.fd = backing;
        cfg.info.lo_offset = offset;
        cfg.info.lo_sizelimit = sizelimit;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0);
        if (ioctl(loop, LOOP_CONFIGURE, &cfg) == 0) break;
        err = -errno;
        close(loop);
        loop = -1;
        if (err != -EBUSY) break;  /* EBUSY: another process took this one first */
    }
    close(ctl);
    close(backing);
    if (loop < 0) return err;
    *number = n;
    return loop;
}

/* The filesystem type of an open file (statfs f_type), to pick how its I/O is performed. */
static long vmfs_fs_magic(int fd) {
    struct statfs s;
    return fstatfs(fd, &s) < 0 ? -errno : (long)s.f_type;
}

/* FILE_READ's loop in one call: read until n bytes or end of file; the count, or -errno when
   nothing was read. With RWF_NOWAIT, data not in the page cache gives -EAGAIN even after a
   partial read, so the caller redoes the whole read through io_uring (reads are idempotent). */
static long vmfs_pread_full(int fd, char *buf, size_t n, uint64_t pos, int flags) {
    size_t done = 0;
    while (done < n) {
        size_t want = n - done > 0x7ffff000 ? 0x7ffff000 : n - done;
        struct iovec iov = { buf + done, want };
        ssize_t r = preadv2(fd, &iov, 1, (off_t)(pos + done), flags);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN && (flags & RWF_NOWAIT)) return -EAGAIN;
            if (done) break;
            return -errno;
        }
        if (r == 0) break;
        done += (size_t)r;
    }
    return (long)done;
}

/* FILE_WRITE's loop: the count written (short only after an error), or -errno if none. */
static long vmfs_pwrite_full(int fd, const char *buf, size_t n, uint64_t pos) {
    size_t done = 0;
    while (done < n) {
        size_t want = n - done > 0x7ffff000 ? 0x7ffff000 : n - done;
        ssize_t r = pwrite(fd, buf + done, want, (off_t)(pos + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            if (done) break;
            return -errno;
        }
        if (r == 0) {
            if (done) break;
            return -EIO;
        }
        done += (size_t)r;
    }
    return (long)done;
}

/* The same through a private buffer, for a share in device memory (PROTOCOL 2.7). */
static long vmfs_pread_bounce(int fd, char *bounce, char *share, size_t n, uint64_t pos,
                              int flags) {
    long r = vmfs_pread_full(fd, bounce, n, pos, flags);
    if (r > 0) vmfs_copy_aligned(share, bounce, (size_t)r);
    return r;
}

static long vmfs_pwrite_bounce(int fd, char *bounce, const char *share, size_t n, uint64_t pos) {
    vmfs_copy_aligned(bounce, share, n);
    return vmfs_pwrite_full(fd, bounce, n, pos);
}

/* STAT in one call: resolve confined (openat2 O_PATH), statx, close, and fill the 17 u64 of the
   protocol's stat record (PROTOCOL 3.6) in out. 0, or -errno of the failing step. */
static int vmfs_stat_record(int dfd, const char *path, uint64_t resolve, uint64_t *out) {
    struct statx sx;
    int fd = vmfs_openat2(dfd, path, O_PATH | O_CLOEXEC, 0, resolve);
    int ret;
    if (fd < 0) return fd;
    ret = statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx) < 0 ? -errno : 0;
    close(fd);
    if (ret < 0) return ret;
    out[0] = makedev(sx.stx_dev_major, sx.stx_dev_minor);
    out[1] = sx.stx_ino;
    out[2] = sx.stx_mode;
    out[3] = sx.stx_nlink;
    out[4] = sx.stx_uid;
    out[5] = sx.stx_gid;
    out[6] = makedev(sx.stx_rdev_major, sx.stx_rdev_minor);
    out[7] = sx.stx_size;
    out[8] = sx.stx_blksize;
    out[9] = sx.stx_blocks;
    out[10] = (uint64_t)sx.stx_atime.tv_sec;
    out[11] = (uint64_t)sx.stx_mtime.tv_sec;
    out[12] = (uint64_t)sx.stx_ctime.tv_sec;
    out[13] = sx.stx_atime.tv_nsec;
    out[14] = sx.stx_mtime.tv_nsec;
    out[15] = sx.stx_ctime.tv_nsec;
    out[16] = sx.stx_blocks * 512;
    return 0;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("vmfs._native", SOURCE, libraries=["uring"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
