"""Linux KVM: the binary statistics format, the ``kvm`` stats provider, and the ioctls.

Dependencies point one way: :mod:`.binstats` knows the file format only, :mod:`.provider`
maps it onto the stats model as QEMU's KVM provider does, :mod:`.ioctl` has the numbers.
"""
