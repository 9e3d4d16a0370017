"""``python -m lsched.cli``: the same as the ``lsched`` console script."""

from lsched.cli import main

main()
