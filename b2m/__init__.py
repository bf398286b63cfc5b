"""The ``b2m`` command line: one entry point, thin subcommands over the packages."""
