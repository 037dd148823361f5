"""cffi (API mode) build of vmfs._native: liburing, openat2, directory streams, shared memory.

Built at install time against the system's liburing headers (Debian: liburing-dev). The C
helpers in csrc/ exist so one Python call does one whole step (prep + tag, reap a batch,
a whole read), and so index words and device memory get the access widths and memory ordering
the protocol requires. CDEF below is what Python sees of them.
"""

from cffi import FFI

from vmfs.resources import resource_path

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

struct vmfs_dir { int fd; int at_end; uint64_t index; uint64_t stride; uint32_t marks; ...; };
int vmfs_dir_init(struct vmfs_dir *d, int fd);
int vmfs_dir_restart(struct vmfs_dir *d);
long vmfs_dir_fill(struct vmfs_dir *d);
long vmfs_dir_read(struct vmfs_dir *d, char *out, int device);
int vmfs_dir_seek(struct vmfs_dir *d, uint64_t target);
"""

NATIVE_DIR = resource_path("csrc")
NATIVE_PARTS = ("ring.c", "shm.c", "files.c", "dirs.c", "mount.c")  # in dependency order

PRELUDE = r"""
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
"""

SOURCE = PRELUDE + "\n".join((NATIVE_DIR / name).read_text() for name in NATIVE_PARTS)


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("vmfs._native", SOURCE, libraries=["uring"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
