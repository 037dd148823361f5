/* The driver's shared context (part of vmfs._native; filled by vmfs/driver/native.py). These
  declarations are also what vmfs/_native_build.py hands cffi as the cdef of the context, so
  Python and C see one definition. */

/* Facts of the protocol and of the request machine, copied from vmfs.wire / vmfs.fsm /
   vmfs.driver.journal / vmfs.driver.ops at start-up. */
struct vmfs_facts {
    uint32_t capacity, message_size, header_size, head_offset, tail_offset;
    uint32_t id_offset, type_offset, params_offset;
    uint32_t completion_status_offset, completion_data_offset;
    uint32_t num_commands, num_statuses, max_path, max_name, stat_size;
    uint64_t max_file_offset, resolve, resolve_descending;
    uint64_t open_access_mask, open_known, open_create, open_base, file_mode;
    uint64_t dir_open_flags, dir_mode, dir_min_buffer;
    uint32_t st_error, st_invalid_buffer, st_invalid_fd, st_invalid_read, st_invalid_write;
    uint32_t st_invalid_path, st_too_many_open_files, st_end_of_directory;
    uint32_t journal_words;
    uint64_t journal_started, journal_written;
    /* the request machine: table[state * ntriggers + trigger] -> next state, or -1 */
    const int8_t *table;
    uint32_t nstates, ntriggers;
    uint32_t idle, completed;
    uint32_t take, answer, publish, submit, resubmit, reap, hold, release, run, hand_over;
    uint64_t max_io;           /* the most one read call moves */
    const uint8_t *errno_status; /* errno -> status of a failed read (paths.status_of) */
    uint32_t errno_count;
};

/* A command the refusal log reports (not SUCCESS, not END_OF_DIRECTORY). */
struct vmfs_refused {
    uint64_t index, id, cmd, status;
    uint64_t params[6];
};

/* A command on the ring: a FILE_READ, FILE_OPEN, FILE_CLOSE or STAT (op: VMFS_RING_*). */
struct vmfs_pending {
    uint64_t id, index, cmd, started, position, size, done, buf_off;
    uint64_t params[6];
    uint64_t how[3];  /* an open's struct open_how: flags, mode, resolve */
    char *bounce;     /* device memory: the data lands here first */
    int32_t fd;
    uint32_t op;
    uint32_t status;  /* a STAT's answer while its descriptor closes */
};

struct vmfs_handle {
    int32_t fd;
    uint8_t kind, readable, writable, io;
    uint64_t dev, ino;
    struct vmfs_dir *dir; /* a directory handle's listing (csrc/dirs.c), owned here */
};

struct vmfs_handles {
    struct vmfs_handle *entries;
    uint32_t *generation;
    uint32_t *free_fifo;
    uint32_t limit, slot_bits, generation_mask, free_first, free_count;
};

/* Counters, as vmfs.driver.stats.Counters reads them. */
struct vmfs_counts {
    uint64_t *by_command; /* (num_commands + 1) rows of num_statuses */
    uint64_t *latency;    /* log2 buckets of nanoseconds */
    uint64_t *batches;    /* log2 buckets of commands taken per batch */
    uint32_t latency_buckets, batch_buckets;
};

struct vmfs_ctx {
    struct vmfs_facts f;
    struct vmfs_handles handles;
    struct vmfs_counts counts;
    uint8_t *native;      /* per command type: VMFS_NATIVE_* (0: Python serves it) */
    uint8_t *refusal;     /* per status: whether the refusal log reports it */
    uint8_t *share;
    uint64_t share_size;
    char *bounce;
    uint64_t bounce_size;
    uint64_t bounce_budget, bounce_held; /* device memory: private buffers of reads on the ring */
    uint64_t bounce_peak;
    int device_memory, ring_available, memory_root;
    int root_fd, looks_for, looks; /* vmfs_open_looks: its answer, for which root */
    uint64_t io_known_for; /* the device whose I/O mode is io_known (VMFS_IO_*; 0: none) */
    int io_known;
    uint64_t *journal;    /* the journal's first entry, or NULL */
    uint64_t crash_on_id; /* tests of restart safety: die when this id starts (0: never) */
    int crash_exit_code;
    /* the serve loop */
    uint8_t *cmdq, *cmplq;
    uint8_t *slot_state;
    uint64_t head, next_take, cmpl_tail;
    int irq_fd, wake_fd, notify_fd, uio;
    uint8_t *doorbell;
    int spin_us, idle_ms;
    uint64_t served, batches_run;
    uint64_t cmpl_published;
    struct io_uring *ring;   /* commands the loop puts on io_uring (NULL: none) */
    int ring_event_fd;       /* readable when the ring posts completions */
    struct vmfs_pending *pending; /* per queue slot */
    uint32_t in_flight;
    uint32_t reads_in_flight;
    uint32_t opens_in_flight;   /* each will take a handle slot when it completes */
    char *ring_paths;           /* the paths of FILE_OPENs prepared but not yet submitted */
    uint32_t ring_paths_used, ring_paths_cap;
    /* refusals since the loop last returned (for the refusal log) */
    struct vmfs_refused refused[16];
    uint32_t refused_count;
    /* tests: every transition the loop made, as (from << 16 | trigger << 8 | to) */
    uint32_t *transitions;
    uint32_t transitions_len, transitions_cap;
};
