"""Support for tests and benchmarks: real QEMU instances and raw QMP conversations."""
