"""``python -m lens``: the same command line as the ``lens`` console script."""

from lens.cli import main

main()
