"""cffi (API mode) build of vmfs._native: liburing, openat2, directory streams, shared memory.

Built at install time against the system's liburing headers (Debian: liburing-dev). The C
helpers in csrc/ exist so one Python call does one whole step (prep + tag, reap a batch,
a whole read), and so index words and device memory get the access widths and memory ordering
the protocol requires. CDEF below is what Python sees of them.
"""

from cffi import FFI

from vmfs.resources import resource_path

NATIVE_DIR = resource_path("csrc")
# The context C and Python share is declared once, in csrc/context.h, for both sides.
CONTEXT = (NATIVE_DIR / "context.h").read_text()

CDEF = (
    r"""
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
#define RESOLVE_IN_ROOT ...
#define RESOLVE_NO_MAGICLINKS ...
#define RESOLVE_NO_SYMLINKS ...
#define AT_EMPTY_PATH ...
#define AT_REMOVEDIR ...
#define AT_FDCWD ...
#define STATX_BASIC_STATS ...
#define RESOLVE_CACHED ...

int vmfs_ring_init(struct io_uring *ring, unsigned entries, unsigned flags);
void io_uring_queue_exit(struct io_uring *ring);
int io_uring_submit(struct io_uring *ring);
int io_uring_register_eventfd(struct io_uring *ring, int fd);

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

int vmfs_reap(struct io_uring *r, uint64_t *tags, int32_t *results, int max);
int vmfs_wait(struct io_uring *r, unsigned wait_nr);

int vmfs_openat2(int dfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
int vmfs_openat2_once(int dfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
int vmfs_statx(int dfd, const char *path, int flags, unsigned mask, struct statx *out);

uint64_t vmfs_load_acquire(void *addr);
void vmfs_store_release(void *addr, uint64_t value);
void vmfs_copy_aligned(void *dst, const void *src, size_t n);
void vmfs_store_byte(void *addr, uint8_t value);

#define MS_NOSUID ...
#define MS_NODEV ...
#define MS_NOEXEC ...
#define MS_SYNCHRONOUS ...
int vmfs_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
               const char *data);
int vmfs_umount2(const char *target, int flags);
int vmfs_loop_attach(const char *path, uint64_t offset, uint64_t sizelimit, int read_only,
                     int *number);
int vmfs_memory_fs(int fd);
long vmfs_pread_full(int fd, char *buf, size_t n, uint64_t pos, int flags);
long vmfs_pwrite_full(int fd, const char *buf, size_t n, uint64_t pos);

struct vmfs_dir { int fd; int at_end; uint64_t index; uint64_t stride; uint32_t marks; ...; };
int vmfs_dir_restart(struct vmfs_dir *d);
long vmfs_dir_read(struct vmfs_dir *d, char *out, int device);
int vmfs_dir_seek(struct vmfs_dir *d, uint64_t target);
"""
    + CONTEXT
    + r"""

#define VMFS_ANSWERED ...
#define VMFS_KIND_FILE ...
#define VMFS_KIND_DIR ...
#define VMFS_NATIVE_READ ...
#define VMFS_NATIVE_WRITE ...
#define VMFS_NATIVE_STAT ...
#define VMFS_NATIVE_OPEN ...
#define VMFS_NATIVE_CLOSE ...
#define VMFS_NATIVE_SIZE ...
#define VMFS_NATIVE_DIR_OPEN ...
#define VMFS_NATIVE_DIR_READ ...
#define VMFS_NATIVE_DIR_CLOSE ...
#define VMFS_NATIVE_DIR_TELL ...
#define VMFS_NATIVE_DIR_SEEK ...
#define VMFS_NATIVE_DIR_REWIND ...
#define VMFS_NATIVE_DIR_CREATE ...
#define VMFS_NATIVE_DIR_REMOVE ...
#define VMFS_NATIVE_FILE_REMOVE ...
#define VMFS_LOOP_PYTHON ...
#define VMFS_LOOP_WOKEN ...
#define VMFS_LOOP_IDLE ...
#define VMFS_LOOP_REFUSED ...
#define VMFS_LOOP_ILLEGAL ...
int vmfs_buffer_ok(uint64_t offset, uint64_t size, uint64_t share_size);
int64_t vmfs_batch_limit(uint64_t capacity, uint64_t head, uint64_t next_take, uint64_t tail,
                         uint64_t cmpl_tail, uint64_t cmpl_head, uint64_t outstanding,
                         int *problem);
int64_t vmfs_handle_add(struct vmfs_ctx *c, int kind, int fd, int readable, int writable,
                        uint64_t dev, uint64_t ino);
int vmfs_handle_slot(const struct vmfs_ctx *c, uint64_t handle, int kind);
long vmfs_share_path(const struct vmfs_ctx *c, uint64_t offset, uint64_t size, char *out);
uint32_t vmfs_check_transfer(const struct vmfs_ctx *c, const uint64_t *p, int writing,
                             int *slot);
uint32_t vmfs_check_stat(const struct vmfs_ctx *c, const uint64_t *p, char *path);
uint32_t vmfs_check_open(struct vmfs_ctx *c, int root, const uint64_t *p, char *path,
                         uint64_t *linux_flags, uint64_t *mode);
int vmfs_open_looks(struct vmfs_ctx *c, int root);
uint64_t vmfs_open_resolve(struct vmfs_ctx *c, int root, const char *path);
int vmfs_open_again(struct vmfs_ctx *c, int root, const char *path, uint64_t flags,
                    uint64_t mode, int err);
int64_t vmfs_open_finish(struct vmfs_ctx *c, int fd, uint64_t flags);
uint32_t vmfs_close_handle(struct vmfs_ctx *c, uint64_t handle, int kind);
void vmfs_release_slot(struct vmfs_ctx *c, int slot);
int64_t vmfs_dir_open_handle(struct vmfs_ctx *c, int fd);
void vmfs_stat_out(const struct vmfs_ctx *c, uint64_t offset, const struct statx *sx);
int vmfs_serve(struct vmfs_ctx *c);
int vmfs_native_slot(struct vmfs_ctx *c, uint64_t index, uint32_t *status, uint64_t *data);
"""
)

NATIVE_PARTS = (
    "ring.c",
    "shm.c",
    "files.c",
    "dirs.c",
    "mount.c",
    "context.h",
    "handles.c",
    "serve.c",
)  # in dependency order

PRELUDE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <time.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
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
