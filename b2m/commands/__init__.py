"""One module per ``b2m`` subcommand; each defines ``add_parser`` and ``run``."""
