"""``python -m qsp STAGE ...``: the ``qsp`` command (see :mod:`qsp.cli`)."""
from .cli import cli

if __name__ == "__main__":
    cli()
