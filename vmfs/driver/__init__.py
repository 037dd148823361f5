"""The driver: the serving process and everything a command passes through on its way to
the kernel (vmfs.fsm, vmfs.wire, vmfs.uring and vmfs.uio are its named parts at the top)."""
