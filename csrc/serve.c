/* The native serve loop (part of vmfs._native; driven from vmfs/driver/native.py).

  One call serves commands until one needs Python: it takes what the queue indices allow,
  moves each request along the compiled request machine handed over from vmfs.fsm (take, then
  answer, then publish, or submit and reap for a command on the ring: an edge the table lacks
  stops the loop), serves the command (csrc/handles.c, or on the ring below), writes its
  completion, journal phase and counters, publishes the batch
  and rings the doorbell, then sleeps on the transport's doorbell. It returns for a command it
  does not take (left untaken, for the Python engine), a refusal to log, a signal, a second
  without work, or indices it cannot trust. Nothing is ever in flight when it returns. */

enum {
    VMFS_LOOP_PYTHON = 1,  /* the next command is Python's */
    VMFS_LOOP_WOKEN = 2,   /* a signal (Python's wake-up fd) */
    VMFS_LOOP_IDLE = 3,    /* nothing for idle_ms */
    VMFS_LOOP_REFUSED = 4, /* a command was answered with an error status: log it */
    VMFS_LOOP_QUEUE = 5,   /* the indices are corrupt or the completion queue is full */
    VMFS_LOOP_ILLEGAL = 6  /* the request machine has no edge for a step: a driver bug */
};

/* How many commands may be taken now; *problem: 1 command queue corrupt, 2 completion queue
   corrupt, 3 completion queue full with commands waiting. The rule of the queue protocol
   (vmfs.wire.batch_limit is this function). */
static int64_t vmfs_batch_limit(uint64_t capacity, uint64_t head, uint64_t next_take,
                                uint64_t tail, uint64_t cmpl_tail, uint64_t cmpl_head,
                                uint64_t outstanding, int *problem) {
    const __int128 wrap = (__int128)1 << 64;
    uint64_t queued = tail - head, waiting = tail - next_take, unconsumed;
    __int128 free, n;
    *problem = 0;
    if (queued > capacity || waiting > queued) {
        *problem = 1;
        return 0;
    }
    /* Taking crossed 2^64 before publishing did: the two sides of the wrap share slots. */
    if (next_take < head) return 0;
    unconsumed = cmpl_tail - cmpl_head;
    if (unconsumed > capacity) {
        *problem = 2;
        return 0;
    }
    if (cmpl_tail < cmpl_head) {
        free = 0; /* written across 2^64, not yet consumed across it */
    } else {
        __int128 room = (__int128)capacity - unconsumed - outstanding;
        __int128 before_wrap = wrap - cmpl_tail - outstanding;
        free = room < before_wrap ? room : before_wrap;
    }
    if (waiting && free <= 0 && !outstanding) {
        *problem = 3;
        return 0;
    }
    n = waiting;
    if (free < n) n = free;
    if (wrap - next_take < n) n = wrap - next_take;
    return n < 0 ? 0 : (int64_t)n;
}

#if defined(__x86_64__) || defined(__i386__)
#define vmfs_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define vmfs_cpu_relax() __asm__ __volatile__("yield")
#else
#define vmfs_cpu_relax() do { } while (0)
#endif

static int vmfs_move(struct vmfs_ctx *c, uint32_t slot, uint32_t trigger) {
    int from = c->slot_state[slot];
    int to = c->f.table[from * c->f.ntriggers + trigger];
    if (to < 0) return -1;
    c->slot_state[slot] = (uint8_t)to;
    if (c->transitions && c->transitions_len < c->transitions_cap)
        c->transitions[c->transitions_len++] = (uint32_t)from << 16 | trigger << 8 | (uint32_t)to;
    return 0;
}

static uint64_t vmfs_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static uint32_t vmfs_log2_bucket(uint64_t value, uint32_t buckets) {
    uint32_t bucket = 63 - (uint32_t)__builtin_clzll(value ? value : 1);
    return bucket < buckets ? bucket : buckets - 1;
}

/* Write a command's completion, journal phase and count (its latency is counted by the caller:
   one clock read covers a batch, or a reap). */
static void vmfs_complete(struct vmfs_ctx *c, uint64_t index, uint64_t id, uint64_t cmd,
                          uint32_t status, uint64_t data) {
    uint8_t message[c->f.message_size];
    uint64_t status64 = status, row = cmd < c->f.num_commands ? cmd : c->f.num_commands;
    uint8_t *slot =
        c->cmplq + c->f.header_size + (c->cmpl_tail % c->f.capacity) * c->f.message_size;
    memset(message, 0, sizeof message);
    memcpy(message + c->f.id_offset, &id, 8);
    memcpy(message + c->f.completion_status_offset, &status64, 8);
    memcpy(message + c->f.completion_data_offset, &data, 8);
    if (c->device_memory)
        vmfs_copy_aligned(slot, message, sizeof message);
    else
        memcpy(slot, message, sizeof message);
    if (c->journal) {
        uint64_t *e = c->journal + (index % c->f.capacity) * c->f.journal_words;
        e[0] = index + 1;
        e[1] = c->f.journal_written;
        e[2] = status;
        e[3] = data;
        e[4] = c->cmpl_tail;
    }
    c->cmpl_tail++;
    c->counts.by_command[row * c->f.num_statuses + status]++;
}

static void vmfs_count_latency(struct vmfs_ctx *c, uint64_t started, uint64_t now, uint64_t n) {
    c->counts.latency[vmfs_log2_bucket(now - started, c->counts.latency_buckets)] += n;
}

/* Keep a refusal for the refusal log; 0 when the buffer is full (the loop must return). */
static int vmfs_note_refusal(struct vmfs_ctx *c, uint64_t index, uint64_t id, uint64_t cmd,
                             uint32_t status, const uint64_t *p) {
    struct vmfs_refused *r;
    const uint32_t room = sizeof c->refused / sizeof c->refused[0];
    if (!c->refusal[status]) return 1;
    if (c->refused_count >= room) return 0; /* several reaped at once: the log misses this one */
    r = &c->refused[c->refused_count++];
    r->index = index;
    r->id = id;
    r->cmd = cmd;
    r->status = status;
    memcpy(r->params, p, sizeof r->params);
    return c->refused_count < room;
}

static void vmfs_notify(const struct vmfs_ctx *c) {
    if (c->uio) {
        vmfs_store_byte(c->doorbell, 1);
    } else {
        char one = 1;
        ssize_t ignored = write(c->notify_fd, &one, 1); /* EAGAIN: a wake-up is pending */
        (void)ignored;
    }
}

/* Completions first, then the command head over every answered command in queue order (the
   client may reuse those slots), then the doorbell. */
static int vmfs_publish(struct vmfs_ctx *c) {
    uint64_t head = c->head;
    if (c->cmpl_tail != c->cmpl_published)
        vmfs_store_release(c->cmplq + c->f.tail_offset, c->cmpl_tail);
    while (head != c->next_take && c->slot_state[head % c->f.capacity] == c->f.completed) {
        if (vmfs_move(c, (uint32_t)(head % c->f.capacity), c->f.publish)) return -1;
        head++;
    }
    if (head != c->head) {
        c->head = head;
        vmfs_store_release(c->cmdq + c->f.head_offset, head);
    }
    if (c->cmpl_tail != c->cmpl_published) {
        c->cmpl_published = c->cmpl_tail;
        vmfs_notify(c);
    }
    return 0;
}

static void vmfs_acknowledge(const struct vmfs_ctx *c) {
    char drain[256];
    if (c->uio) {
        uint32_t count, enable = 1;
        ssize_t ignored = read(c->irq_fd, &count, sizeof count);
        ignored = write(c->irq_fd, &enable, sizeof enable); /* unmask the interrupt */
        (void)ignored;
    } else {
        while (read(c->irq_fd, drain, sizeof drain) == (ssize_t)sizeof drain) {
        } /* a short read emptied the FIFO */
    }
}

/* -- commands on the ring ----------------------------------------------------------------------
   A FILE_READ whose data is not in memory, FILE_OPEN, FILE_CLOSE and STAT go on the ring: they
   overlap, and a batch of them costs one system call. Each is checked and journalled first and
   answered when its completion is reaped. */

enum {
    VMFS_RING_READ = 0, VMFS_RING_OPEN, VMFS_RING_CLOSE,
    VMFS_RING_STAT,      /* its O_PATH open; then statx at once, and */
    VMFS_RING_STAT_CLOSE /* the close of that descriptor, after which the STAT is answered */
};
/* How a command was served, besides VMFS_PUNT / ANSWERED / WOULD_BLOCK: it is on the ring. */
enum { VMFS_ON_RING = 3 };

/* Submit what is prepared. Once the submission queue is empty the kernel has copied every
   FILE_OPEN's path and open_how, so their path buffers are free again. */
static void vmfs_ring_submit(struct vmfs_ctx *c) {
    io_uring_submit(c->ring);
    if (!io_uring_sq_ready(c->ring)) c->ring_paths_used = 0;
}

/* A submission entry, submitting what is prepared when the queue is full; NULL if none. */
static struct io_uring_sqe *vmfs_sqe(struct vmfs_ctx *c) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(c->ring);
    if (!sqe) {
        vmfs_ring_submit(c);
        sqe = io_uring_get_sqe(c->ring);
    }
    return sqe;
}

static struct vmfs_pending *vmfs_pending_for(struct vmfs_ctx *c, uint32_t op, uint64_t index,
                                             uint64_t id, uint64_t cmd, const uint64_t *p,
                                             uint64_t started) {
    struct vmfs_pending *q = &c->pending[index % c->f.capacity];
    q->op = op;
    q->id = id;
    q->index = index;
    q->cmd = cmd;
    q->started = started;
    memcpy(q->params, p, sizeof q->params);
    q->bounce = NULL;
    q->fd = -1;
    return q;
}

/* Queue the rest of a pending read; 0, or -1 when the submission queue has no room. */
static int vmfs_prep_pending(struct vmfs_ctx *c, uint32_t slot) {
    struct vmfs_pending *q = &c->pending[slot];
    uint64_t want = q->size - q->done;
    char *buf = q->bounce ? q->bounce + q->done : (char *)c->share + q->buf_off + q->done;
    struct io_uring_sqe *sqe = vmfs_sqe(c);
    if (!sqe) return -1;
    io_uring_prep_read(sqe, q->fd, buf, (unsigned)(want < c->f.max_io ? want : c->f.max_io),
                       q->position + q->done);
    io_uring_sqe_set_data64(sqe, slot);
    return 0;
}

static void vmfs_free_bounce(struct vmfs_ctx *c, struct vmfs_pending *q) {
    if (q->bounce) c->bounce_held -= q->size;
    free(q->bounce);
    q->bounce = NULL;
}

static int vmfs_drain(struct vmfs_ctx *c);

/* A FILE_READ whose data is not in memory goes on the ring, checked and journalled already. */
static int vmfs_read_to_ring(struct vmfs_ctx *c, uint64_t index, uint64_t id, uint64_t cmd,
                             const uint64_t *p, uint64_t started) {
    uint32_t slot = (uint32_t)(index % c->f.capacity);
    int hslot = vmfs_handle_slot(c, p[0], VMFS_KIND_FILE);
    uint64_t size = p[3];
    struct vmfs_pending *q;
    if (hslot < 0) return -1;
    if (size > c->f.max_file_offset - 1 - p[1]) size = c->f.max_file_offset - 1 - p[1];
    q = vmfs_pending_for(c, VMFS_RING_READ, index, id, cmd, p, started);
    q->position = p[1];
    q->size = size;
    q->done = 0;
    q->buf_off = p[2];
    q->fd = c->handles.entries[hslot].fd;
    if (c->device_memory) {
        /* Each read on the ring lands in a private buffer first: bounded, so a client queueing
           big cold reads cannot make the driver hold more than the budget. */
        if (size > c->bounce_size) return -1;
        if (c->bounce_held + size > c->bounce_budget && vmfs_drain(c)) return -1;
        if (!(q->bounce = malloc(size))) return -1;
        c->bounce_held += size;
        if (c->bounce_held > c->bounce_peak) c->bounce_peak = c->bounce_held;
    }
    if (vmfs_prep_pending(c, slot) < 0) {
        vmfs_free_bounce(c, q);
        return -1;
    }
    c->in_flight++;
    c->reads_in_flight++;
    return 0;
}

/* Whether an open of a client's path can go on the ring now: a served root, and a buffer for
   the path until the open is submitted. */
static int vmfs_ring_path_free(const struct vmfs_ctx *c) {
    return c->ring && c->root_fd >= 0 && c->ring_paths_used < c->ring_paths_cap;
}

static char *vmfs_ring_path(const struct vmfs_ctx *c) {
    return c->ring_paths + (size_t)c->ring_paths_used * (c->f.max_path + 2);
}

/* Queue openat2 of `path` (the next ring path buffer) from the root with q's open_how; the
   path buffer is kept until submitted. */
static void vmfs_ring_openat(struct vmfs_ctx *c, struct io_uring_sqe *sqe, struct vmfs_pending *q,
                             char *path, uint32_t used) {
    io_uring_prep_openat2(sqe, c->root_fd, path, (struct open_how *)q->how);
    io_uring_sqe_set_data64(sqe, q->index % c->f.capacity);
    c->ring_paths_used = used + 1; /* a submit in vmfs_sqe may have reset it: this one is kept */
    c->in_flight++;
}

/* Whether FILE_OPEN p can go on the ring now: not a create (the kernel would run it on a
   worker), a handle slot for it when it completes, a buffer for its path. */
static int vmfs_open_fits_ring(const struct vmfs_ctx *c, const uint64_t *p) {
    return vmfs_ring_path_free(c) && !(p[2] & c->f.open_create) &&
           c->handles.free_count > c->opens_in_flight;
}

/* FILE_OPEN on the ring: the checks of vmfs_check_open, then the open. VMFS_ON_RING, or
   VMFS_PUNT with nothing changed. */
static int vmfs_open_to_ring(struct vmfs_ctx *c, uint64_t index, uint64_t id, uint64_t cmd,
                             const uint64_t *p, uint64_t started) {
    uint32_t used = c->ring_paths_used;
    char *path = vmfs_ring_path(c);
    uint64_t flags, mode;
    struct io_uring_sqe *sqe;
    struct vmfs_pending *q;
    if (vmfs_check_open(c, c->root_fd, p, path, &flags, &mode)) return VMFS_PUNT;
    if (!(sqe = vmfs_sqe(c))) return VMFS_PUNT;
    q = vmfs_pending_for(c, VMFS_RING_OPEN, index, id, cmd, p, started);
    q->how[0] = flags;
    q->how[1] = mode;
    q->how[2] = vmfs_open_resolve(c, c->root_fd, path);
    vmfs_ring_openat(c, sqe, q, path, used);
    c->opens_in_flight++;
    return VMFS_ON_RING;
}

/* FILE_CLOSE on the ring: the handle is gone at once, its descriptor closes on the ring. */
static int vmfs_close_to_ring(struct vmfs_ctx *c, uint64_t index, uint64_t id, uint64_t cmd,
                              const uint64_t *p, uint64_t started) {
    int hslot = vmfs_handle_slot(c, p[0], VMFS_KIND_FILE);
    struct io_uring_sqe *sqe;
    struct vmfs_pending *q;
    if (hslot < 0 || !(sqe = vmfs_sqe(c))) return VMFS_PUNT;
    q = vmfs_pending_for(c, VMFS_RING_CLOSE, index, id, cmd, p, started);
    q->fd = vmfs_forget(c, hslot);
    io_uring_prep_close(sqe, q->fd);
    io_uring_sqe_set_data64(sqe, index % c->f.capacity);
    c->in_flight++;
    return VMFS_ON_RING;
}

/* STAT on the ring: the checks of vmfs_check_stat, then an O_PATH open of the path. */
static int vmfs_stat_to_ring(struct vmfs_ctx *c, uint64_t index, uint64_t id, uint64_t cmd,
                             const uint64_t *p, uint64_t started) {
    uint32_t used = c->ring_paths_used;
    char *path = vmfs_ring_path(c);
    struct io_uring_sqe *sqe;
    struct vmfs_pending *q;
    if (vmfs_check_stat(c, p, path) || !(sqe = vmfs_sqe(c))) return VMFS_PUNT;
    q = vmfs_pending_for(c, VMFS_RING_STAT, index, id, cmd, p, started);
    q->how[0] = O_PATH | O_CLOEXEC;
    q->how[1] = 0;
    q->how[2] = c->f.resolve;
    vmfs_ring_openat(c, sqe, q, path, used);
    return VMFS_ON_RING;
}

/* Whether a command may be served while others are on the ring, or must wait for them (the
   barrier): reads, opens and closes are independent of each other, except that a close must
   not overtake a read that may still be resubmitted on the descriptor it closes, and a STAT
   not one whose access time it would report. */
static int vmfs_joins_ring(const struct vmfs_ctx *c, int kind, const uint64_t *p) {
    switch (kind) {
    case VMFS_NATIVE_READ: return 1;
    case VMFS_NATIVE_OPEN: return vmfs_open_fits_ring(c, p);
    case VMFS_NATIVE_CLOSE: return c->ring && !c->reads_in_flight;
    case VMFS_NATIVE_STAT: return vmfs_ring_path_free(c) && !c->reads_in_flight;
    default: return 0;
    }
}

static uint32_t vmfs_errno_status(const struct vmfs_ctx *c, int err) {
    return (uint32_t)err < c->f.errno_count ? c->f.errno_status[err] : c->f.st_error;
}

/* An open on the ring that met a racing rename (EAGAIN) is made again at once, as
   vmfs_openat2 does; its path is read from the share again. */
static int vmfs_reopen(struct vmfs_ctx *c, const struct vmfs_pending *q, int res, char *path) {
    if (vmfs_share_path(c, q->params[0], q->params[1], path) < 0) return res;
    if (res != -EAGAIN) return res;
    return vmfs_openat2(c->root_fd, path, q->how[0], q->how[1], q->how[2]);
}

/* A STAT's O_PATH descriptor (or failure) from the ring: the record goes to the share now, the
   descriptor is closed on the ring; 1 when that close is queued (the STAT is answered then). */
static int vmfs_stat_reaped(struct vmfs_ctx *c, struct vmfs_pending *q, uint32_t slot, int res) {
    char path[c->f.max_path + 2];
    struct statx sx;
    struct io_uring_sqe *sqe;
    int fd = res < 0 ? vmfs_reopen(c, q, res, path) : res;
    if (fd < 0) {
        q->status = vmfs_errno_status(c, -fd);
        return 0;
    }
    if (statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx) < 0) {
        q->status = vmfs_errno_status(c, errno);
    } else {
        q->status = 0;
        vmfs_stat_out(c, q->params[2], &sx);
    }
    if (!(sqe = io_uring_get_sqe(c->ring))) {
        close(fd);
        return 0;
    }
    q->op = VMFS_RING_STAT_CLOSE;
    q->fd = fd;
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, slot);
    return 1;
}

/* A FILE_OPEN's answer from its completion: the handle, or the status. */
static uint32_t vmfs_open_reaped(struct vmfs_ctx *c, const struct vmfs_pending *q, int res,
                                 uint64_t *data) {
    char path[c->f.max_path + 2];
    int fd = res;
    int64_t handle;
    path[0] = 0;
    c->opens_in_flight--;
    if (fd < 0) fd = vmfs_reopen(c, q, fd, path);
    if (fd < 0 && path[0]) fd = vmfs_open_again(c, c->root_fd, path, q->how[0], q->how[1], -fd);
    if (fd < 0) return vmfs_errno_status(c, -fd);
    handle = vmfs_open_finish(c, fd, q->params[2]);
    if (handle < 0) return (uint32_t)-handle;
    *data = (uint64_t)handle;
    return 0;
}

/* Take every completion the ring has posted: answer its command, or queue the rest of a short
   read. */
static int vmfs_reap_ring(struct vmfs_ctx *c) {
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0, again = 0;
    int ret = 0;
    uint64_t now = vmfs_now_ns();
    io_uring_for_each_cqe(c->ring, head, cqe) {
        uint32_t slot = (uint32_t)cqe->user_data, status = 0;
        struct vmfs_pending *q = &c->pending[slot];
        uint64_t data = 0;
        int res = cqe->res;
        seen++;
        if (q->op == VMFS_RING_OPEN) {
            status = vmfs_open_reaped(c, q, res, &data);
        } else if (q->op == VMFS_RING_CLOSE) {
            status = res < 0 && res != -EINTR ? c->f.st_error : 0;
        } else if (q->op == VMFS_RING_STAT) {
            if (vmfs_stat_reaped(c, q, slot, res)) {
                if (vmfs_move(c, slot, c->f.resubmit)) ret = -1;
                again++;
                continue;
            }
            status = q->status;
        } else if (q->op == VMFS_RING_STAT_CLOSE) {
            status = q->status; /* an O_PATH descriptor's close has nothing to report */
        } else {
            if (res > 0) {
                q->done += (uint64_t)res;
                if (q->done < q->size) {
                    if (vmfs_move(c, slot, c->f.resubmit) || vmfs_prep_pending(c, slot) < 0)
                        ret = -1;
                    again++;
                    continue;
                }
            } else if (res < 0 && !q->done) {
                status = vmfs_errno_status(c, -res);
            }
            if (q->bounce) {
                if (q->done) vmfs_copy_aligned(c->share + q->buf_off, q->bounce, q->done);
                vmfs_free_bounce(c, q);
            }
            data = status ? 0 : q->done;
            c->reads_in_flight--;
        }
        if (vmfs_move(c, slot, c->f.reap)) ret = -1;
        vmfs_complete(c, q->index, q->id, q->cmd, status, data);
        vmfs_count_latency(c, q->started, now, 1);
        c->served++;
        c->in_flight--;
        if (status) vmfs_note_refusal(c, q->index, q->id, q->cmd, status, q->params);
    }
    io_uring_cq_advance(c->ring, seen);
    if (again) vmfs_ring_submit(c); /* the rest of short reads, STATs' closes: submitted */
    return ret;
}

/* The barrier: every command on the ring finished and answered. */
static int vmfs_drain(struct vmfs_ctx *c) {
    while (c->in_flight) {
        int ret = io_uring_submit_and_wait(c->ring, 1);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) return -1;
        if (!io_uring_sq_ready(c->ring)) c->ring_paths_used = 0;
        if (vmfs_reap_ring(c)) return -1;
    }
    return 0;
}

/* -- the loop ---------------------------------------------------------------------------------- */

/* Command `index`'s id, type and six parameter words, from one copy of its slot (aligned
   accesses only on device memory). */
static void vmfs_read_slot(const struct vmfs_ctx *c, uint64_t index, uint64_t *id, uint64_t *cmd,
                           uint64_t *p) {
    uint8_t message[c->f.message_size];
    const uint8_t *src =
        c->cmdq + c->f.header_size + (index % c->f.capacity) * c->f.message_size;
    if (c->device_memory)
        vmfs_copy_aligned(message, src, sizeof message);
    else
        memcpy(message, src, sizeof message);
    memcpy(id, message + c->f.id_offset, 8);
    memcpy(cmd, message + c->f.type_offset, 8);
    memcpy(p, message + c->f.params_offset, 6 * sizeof *p);
}

/* Take and serve one batch: how many were taken; *code set when the loop must return. Reads
   that would wait for the disk, opens, closes and STATs go on the ring and overlap; a command
   that may not join them (vmfs_joins_ring) first waits for them (barrier_wait), so the client
   sees queue order. */
static uint64_t vmfs_serve_batch(struct vmfs_ctx *c, int64_t n, int *code) {
    uint64_t taken = 0, answered = 0, started = vmfs_now_ns();
    for (; (int64_t)taken < n; taken++) {
        uint64_t index = c->next_take, id, cmd, p[6], data;
        uint32_t slot = (uint32_t)(index % c->f.capacity), status = 0, done_by, ring_by;
        int kind, served;
        vmfs_read_slot(c, index, &id, &cmd, p);
        kind = cmd < c->f.num_commands ? c->native[cmd] : VMFS_NATIVE_NONE;
        if (kind == VMFS_NATIVE_NONE) {
            *code = VMFS_LOOP_PYTHON;
            break;
        }
        if (vmfs_move(c, slot, c->f.take)) {
            *code = VMFS_LOOP_ILLEGAL;
            break;
        }
        done_by = c->f.answer;
        ring_by = c->f.submit;
        if (c->in_flight && !vmfs_joins_ring(c, kind, p)) {
            if (vmfs_move(c, slot, c->f.hold) || vmfs_drain(c)) {
                *code = VMFS_LOOP_ILLEGAL;
                break;
            }
            done_by = c->f.run;
            ring_by = c->f.release;
        }
        served = VMFS_PUNT;
        if (vmfs_native_start(c, index, id, cmd, p)) {
            if (kind == VMFS_NATIVE_OPEN && vmfs_joins_ring(c, kind, p))
                served = vmfs_open_to_ring(c, index, id, cmd, p, started);
            else if (kind == VMFS_NATIVE_CLOSE && vmfs_joins_ring(c, kind, p))
                served = vmfs_close_to_ring(c, index, id, cmd, p, started);
            else if (kind == VMFS_NATIVE_STAT && vmfs_joins_ring(c, kind, p))
                served = vmfs_stat_to_ring(c, index, id, cmd, p, started);
            else
                served = vmfs_native_run(c, kind, p, &status, &data);
        }
        if (served == VMFS_WOULD_BLOCK && c->ring &&
            vmfs_read_to_ring(c, index, id, cmd, p, started) == 0)
            served = VMFS_ON_RING;
        if (served == VMFS_ON_RING) {
            c->next_take = index + 1;
            if (vmfs_move(c, slot, ring_by)) {
                *code = VMFS_LOOP_ILLEGAL;
                taken++;
                break;
            }
            continue;
        }
        if (served != VMFS_ANSWERED) {
            /* Untaken: the Python engine takes it afresh, after what is on the ring. */
            if (vmfs_move(c, slot, c->f.hand_over)) *code = VMFS_LOOP_ILLEGAL;
            else *code = VMFS_LOOP_PYTHON;
            break;
        }
        if (vmfs_move(c, slot, done_by)) {
            *code = VMFS_LOOP_ILLEGAL;
            break;
        }
        vmfs_complete(c, index, id, cmd, status, data);
        answered++;
        c->next_take = index + 1;
        c->served++;
        if (!vmfs_note_refusal(c, index, id, cmd, status, p)) {
            *code = VMFS_LOOP_REFUSED;
            taken++;
            break;
        }
    }
    if (answered) vmfs_count_latency(c, started, vmfs_now_ns(), answered);
    return taken;
}

/* Before handing back: nothing in flight, everything answered published. */
static int vmfs_leave(struct vmfs_ctx *c, int code) {
    if (c->in_flight && vmfs_drain(c)) code = VMFS_LOOP_ILLEGAL;
    if (vmfs_publish(c)) code = VMFS_LOOP_ILLEGAL;
    if (code != VMFS_LOOP_ILLEGAL && c->refused_count) code = VMFS_LOOP_REFUSED;
    return code;
}

static int vmfs_serve(struct vmfs_ctx *c) {
    unsigned batches_since_look = 0;
    c->cmpl_published = c->cmpl_tail;
    for (;;) {
        uint64_t tail = vmfs_load_acquire(c->cmdq + c->f.tail_offset);
        uint64_t cmpl_head = vmfs_load_acquire(c->cmplq + c->f.head_offset);
        int problem, code = 0;
        struct pollfd fds[3];
        int ready, nfds;
        /* taken but not yet written: the reads on the ring */
        int64_t n = vmfs_batch_limit(c->f.capacity, c->head, c->next_take, tail, c->cmpl_tail,
                                     cmpl_head, c->in_flight, &problem);
        if (problem) return vmfs_leave(c, VMFS_LOOP_QUEUE);
        if (n > 0) {
            uint64_t taken = vmfs_serve_batch(c, n, &code);
            if (c->in_flight) vmfs_ring_submit(c);
            if (c->in_flight && vmfs_reap_ring(c)) return vmfs_leave(c, VMFS_LOOP_ILLEGAL);
            if (vmfs_publish(c)) return vmfs_leave(c, VMFS_LOOP_ILLEGAL);
            if (taken) {
                c->counts.batches[vmfs_log2_bucket(taken, c->counts.batch_buckets)]++;
                c->batches_run++;
            }
            if (code) return vmfs_leave(c, code);
            if (c->refused_count) return vmfs_leave(c, VMFS_LOOP_REFUSED);
            if (++batches_since_look < 64) continue;
            /* Busy without pause: still look for a signal now and then. */
            batches_since_look = 0;
            fds[0].fd = c->wake_fd;
            fds[0].events = POLLIN;
            if (poll(fds, 1, 0) != 0) return vmfs_leave(c, VMFS_LOOP_WOKEN);
            continue;
        }
        if (c->spin_us > 0 && !c->in_flight) {
            uint64_t until = vmfs_now_ns() + (uint64_t)c->spin_us * 1000u;
            while (vmfs_load_acquire(c->cmdq + c->f.tail_offset) == tail && vmfs_now_ns() < until)
                vmfs_cpu_relax();
            if (vmfs_load_acquire(c->cmdq + c->f.tail_offset) != tail) continue;
        }
        if (c->in_flight) {
            io_uring_get_events(c->ring); /* completions waiting in task work are posted now */
            if (vmfs_reap_ring(c) || vmfs_publish(c)) return vmfs_leave(c, VMFS_LOOP_ILLEGAL);
            if (!c->in_flight) continue;
        }
        fds[0].fd = c->irq_fd;
        fds[0].events = POLLIN;
        fds[1].fd = c->wake_fd;
        fds[1].events = POLLIN;
        nfds = 2;
        if (c->in_flight) {
            fds[2].fd = c->ring_event_fd;
            fds[2].events = POLLIN;
            nfds = 3;
        }
        ready = poll(fds, (nfds_t)nfds, c->idle_ms);
        if (ready < 0) return vmfs_leave(c, VMFS_LOOP_WOKEN); /* EINTR: a signal */
        if (ready == 0 && !c->in_flight) return vmfs_leave(c, VMFS_LOOP_IDLE);
        if (ready > 0 && fds[1].revents) return vmfs_leave(c, VMFS_LOOP_WOKEN);
        if (ready > 0 && fds[0].revents) vmfs_acknowledge(c);
        if (c->in_flight) {
            uint64_t events;
            if (nfds == 3 && fds[2].revents && read(c->ring_event_fd, &events, 8) < 0) events = 0;
            if (vmfs_reap_ring(c) || vmfs_publish(c)) return vmfs_leave(c, VMFS_LOOP_ILLEGAL);
        }
    }
}

/* For the Python engine: serve the command in slot `index` natively if this code takes it (the
   engine has already taken it and has nothing in flight). */
static int vmfs_native_slot(struct vmfs_ctx *c, uint64_t index, uint32_t *status,
                            uint64_t *data) {
    uint64_t id, cmd, p[6];
    vmfs_read_slot(c, index, &id, &cmd, p);
    return vmfs_native_command(c, index, id, cmd, p, status, data);
}
