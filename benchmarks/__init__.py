"""tsproc's benchmarks against pure-Go tsnet and the kernel: see benchmarks/README.md."""
