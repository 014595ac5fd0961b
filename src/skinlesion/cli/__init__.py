"""The `skinlesion` command: one module per subcommand, each building its own parser.

The library never imports this package; `main.main` dispatches to a subcommand's module, which
parses its flags into the library's config and calls the library.
"""
