"""Native CPU kernels (csrc/): attention over paged KV memory and the decoder's fused elementwise
passes, compiled once with the system C compiler into one cached library and called with ctypes."""
