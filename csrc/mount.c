/* Mounting the block device: mount(2), umount2(2), loop devices for images and partitions (part
  of vmfs._native; see vmfs/_native_build.py). */

/* mount(2) and umount2(2) without a shell: the driver mounts on INITIALISE
   (docs/protocol.md "The commands"). */
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
