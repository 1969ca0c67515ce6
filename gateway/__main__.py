"""``python -m gateway`` is the ``roost`` command."""

from gateway.cli import main

main()
