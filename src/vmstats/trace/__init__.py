"""The kernel's tracepoints: their formats (and, next, counting them per vCPU)."""
