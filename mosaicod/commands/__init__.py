"""Sub-commands of the `mosaicod` CLI (each module: register(subparsers))."""
