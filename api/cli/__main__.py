"""``python -m api.cli``: the ``grft`` command."""

from api.cli import main

main()
