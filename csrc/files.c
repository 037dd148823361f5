/* File-system calls done at once: confined opens, statx, and the whole-transfer read/write
  loops (part of vmfs._native; see vmfs/_native_build.py). */

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

/* openat2 until it answers: EAGAIN (a racing rename during resolution) is retried too. */
static int vmfs_openat2(int dfd, const char *path, uint64_t flags, uint64_t mode,
                        uint64_t resolve) {
    int ret;
    do {
        ret = vmfs_openat2_once(dfd, path, flags, mode, resolve);
    } while (ret == -EAGAIN);
    return ret;
}

static int vmfs_statx(int dfd, const char *path, int flags, unsigned mask, struct statx *out) {
    return statx(dfd, path, flags, mask, out) < 0 ? -errno : 0;
}

/* Whether an open file lives on a memory filesystem (tmpfs, ramfs): its I/O never waits for a
   disk, so it is done at once rather than through io_uring. */
#define VMFS_TMPFS_MAGIC 0x01021994
#define VMFS_RAMFS_MAGIC 0x858458F6
static int vmfs_memory_fs(int fd) {
    struct statfs s;
    if (fstatfs(fd, &s) < 0) return 0;
    return s.f_type == VMFS_TMPFS_MAGIC || s.f_type == VMFS_RAMFS_MAGIC;
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

/* The same through a private buffer, for a share in device memory
   (docs/protocol.md "Transports"). */
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
