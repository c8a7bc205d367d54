"""`python -m tessera.local up ...` — the local cloud without the `tessera` console script."""

from tessera.local.cli import main

main()
