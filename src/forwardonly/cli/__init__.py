"""The ``forwardonly`` command line: one module per subcommand."""
