"""Live views of stats, like ``kvm_stat``: sampling and rates apart from drawing."""
