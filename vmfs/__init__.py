"""vmfs: serve the LionsOS file-system protocol from a Linux guest, through io_uring."""

__version__ = "0.1.0"
