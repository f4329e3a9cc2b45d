"""The ``vmstats`` command line: each subcommand is a thin shell over the library."""
