/* io_uring: ring set-up, probe, one-call prep of each operation, batch reap (part of
  vmfs._native; see vmfs/_native_build.py). */

static int vmfs_ring_init(struct io_uring *ring, unsigned entries, unsigned flags) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags;
    return io_uring_queue_init_params(entries, ring, &p);
}

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
