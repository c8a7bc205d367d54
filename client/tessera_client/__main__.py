"""`python -m tessera_client`: the `tessera` command."""

from tessera_client.cli import main

main()
