"""Sub-commands of ``dsms``: each module has ``add_arguments(parser)`` and ``run(args) -> int``."""
