"""libvirt as a source of VMs and stats, for the host daemon: domains found, named and
followed through a read-only connection, and libvirt's stats put back into QEMU's form."""
