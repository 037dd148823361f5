/* Shared memory: ordered index words, the doorbell store, copies safe on device memory (part of
  vmfs._native; see vmfs/_native_build.py). */

/* Index words: single aligned 64-bit accesses with acquire/release ordering
   (docs/protocol.md "Queue layout"). */
static uint64_t vmfs_load_acquire(void *addr) {
    return __atomic_load_n((uint64_t *)addr, __ATOMIC_ACQUIRE);
}

static void vmfs_store_release(void *addr, uint64_t value) {
    __atomic_store_n((uint64_t *)addr, value, __ATOMIC_RELEASE);
}

static void vmfs_store_byte(void *addr, uint8_t value) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    *(volatile uint8_t *)addr = value;
}

/* Copy for device memory: naturally aligned accesses only, each source byte read once.
   8-byte words where both addresses are 8-aligned, bytes elsewhere
   (docs/protocol.md "Transports"). */
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
