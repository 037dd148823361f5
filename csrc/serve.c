/* The native serve loop (part of vmfs._native; driven from vmfs/native.py).

  One call serves commands until one needs Python: it takes what the queue indices allow,
  moves each request along the compiled request machine handed over from vmfs.fsm (take, then
  answer, then publish: an edge the table lacks stops the loop), serves the command with
  vmfs_native_command, writes its completion, journal phase and counters, publishes the batch
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

static void vmfs_complete(struct vmfs_ctx *c, uint64_t index, uint64_t id, uint64_t cmd,
                          uint32_t status, uint64_t data, uint64_t started) {
    uint8_t message[c->f.message_size];
    uint64_t status64 = status, row = cmd < c->f.num_commands ? cmd : c->f.num_commands;
    uint8_t *slot = c->cmplq + c->f.header_size + (c->cmpl_tail % c->f.capacity) * c->f.message_size;
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
    c->counts.latency[vmfs_log2_bucket(vmfs_now_ns() - started, c->counts.latency_buckets)]++;
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

/* Completions first, then the command head (the client may reuse those slots), then the
   doorbell. */
static int vmfs_publish(struct vmfs_ctx *c, uint64_t taken) {
    uint64_t i;
    vmfs_store_release(c->cmplq + c->f.tail_offset, c->cmpl_tail);
    for (i = 0; i < taken; i++)
        if (vmfs_move(c, (uint32_t)((c->head + i) % c->f.capacity), c->f.publish)) return -1;
    c->head += taken;
    vmfs_store_release(c->cmdq + c->f.head_offset, c->head);
    vmfs_notify(c);
    c->counts.batches[vmfs_log2_bucket(taken, c->counts.batch_buckets)]++;
    c->batches_run++;
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
        while (read(c->irq_fd, drain, sizeof drain) > 0) {
        }
    }
}

/* Take and serve one batch: how many were answered; *code set when the loop must return. */
static uint64_t vmfs_serve_batch(struct vmfs_ctx *c, int64_t n, int *code) {
    uint64_t taken = 0;
    uint8_t message[c->f.message_size];
    for (; (int64_t)taken < n; taken++) {
        uint64_t index = c->next_take, id, cmd, p[6], data, started;
        uint32_t slot = (uint32_t)(index % c->f.capacity), status;
        const uint8_t *src = c->cmdq + c->f.header_size + slot * c->f.message_size;
        if (c->device_memory)
            vmfs_copy_aligned(message, src, sizeof message);
        else
            memcpy(message, src, sizeof message);
        memcpy(&id, message + c->f.id_offset, 8);
        memcpy(&cmd, message + c->f.type_offset, 8);
        memcpy(p, message + c->f.params_offset, sizeof p);
        if (cmd >= c->f.num_commands || !c->native[cmd]) {
            *code = VMFS_LOOP_PYTHON;
            break;
        }
        started = vmfs_now_ns();
        if (vmfs_move(c, slot, c->f.take)) {
            *code = VMFS_LOOP_ILLEGAL;
            break;
        }
        if (vmfs_native_command(c, index, id, cmd, p, &status, &data) == VMFS_PUNT) {
            c->slot_state[slot] = (uint8_t)c->f.idle; /* untaken: Python takes it afresh */
            *code = VMFS_LOOP_PYTHON;
            break;
        }
        if (vmfs_move(c, slot, c->f.answer)) {
            *code = VMFS_LOOP_ILLEGAL;
            break;
        }
        vmfs_complete(c, index, id, cmd, status, data, started);
        c->next_take = index + 1;
        c->served++;
        if (c->refusal[status]) {
            c->refused_index = index;
            c->refused_id = id;
            c->refused_cmd = cmd;
            c->refused_status = status;
            memcpy(c->refused_params, p, sizeof p);
            *code = VMFS_LOOP_REFUSED;
            taken++;
            break;
        }
    }
    return taken;
}

static int vmfs_serve(struct vmfs_ctx *c) {
    unsigned batches_since_look = 0;
    for (;;) {
        uint64_t tail = vmfs_load_acquire(c->cmdq + c->f.tail_offset);
        uint64_t cmpl_head = vmfs_load_acquire(c->cmplq + c->f.head_offset);
        int problem, code = 0;
        int64_t n = vmfs_batch_limit(c->f.capacity, c->head, c->next_take, tail, c->cmpl_tail,
                                     cmpl_head, 0, &problem);
        struct pollfd fds[2];
        int ready;
        if (problem) return VMFS_LOOP_QUEUE;
        if (n > 0) {
            uint64_t taken = vmfs_serve_batch(c, n, &code);
            if (taken && vmfs_publish(c, taken)) return VMFS_LOOP_ILLEGAL;
            if (code) return code;
            if (++batches_since_look < 64) continue;
            /* Busy without pause: still look for a signal now and then. */
            batches_since_look = 0;
            fds[0].fd = c->wake_fd;
            fds[0].events = POLLIN;
            if (poll(fds, 1, 0) != 0) return VMFS_LOOP_WOKEN;
            continue;
        }
        if (c->spin_us > 0) {
            uint64_t until = vmfs_now_ns() + (uint64_t)c->spin_us * 1000u;
            while (vmfs_load_acquire(c->cmdq + c->f.tail_offset) == tail && vmfs_now_ns() < until)
                vmfs_cpu_relax();
            if (vmfs_load_acquire(c->cmdq + c->f.tail_offset) != tail) continue;
        }
        fds[0].fd = c->irq_fd;
        fds[0].events = POLLIN;
        fds[1].fd = c->wake_fd;
        fds[1].events = POLLIN;
        ready = poll(fds, 2, c->idle_ms);
        if (ready < 0) return VMFS_LOOP_WOKEN; /* EINTR: a signal */
        if (ready == 0) return VMFS_LOOP_IDLE;
        if (fds[1].revents) return VMFS_LOOP_WOKEN;
        if (fds[0].revents) vmfs_acknowledge(c);
    }
}

/* For the Python engine: serve the command in slot `index` natively if this code takes it (the
   engine has already taken it and has nothing in flight). */
static int vmfs_native_slot(struct vmfs_ctx *c, uint64_t index, uint32_t *status,
                            uint64_t *data) {
    uint8_t message[c->f.message_size];
    uint64_t id, cmd, p[6];
    const uint8_t *src =
        c->cmdq + c->f.header_size + (index % c->f.capacity) * c->f.message_size;
    if (c->device_memory)
        vmfs_copy_aligned(message, src, sizeof message);
    else
        memcpy(message, src, sizeof message);
    memcpy(&id, message + c->f.id_offset, 8);
    memcpy(&cmd, message + c->f.type_offset, 8);
    memcpy(p, message + c->f.params_offset, sizeof p);
    return vmfs_native_command(c, index, id, cmd, p, status, data);
}
