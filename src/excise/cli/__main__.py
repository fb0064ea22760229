"""``python -m excise.cli`` (as ``accelerate launch -m excise.cli`` runs it): the ``excise`` command."""

import sys

from excise.cli import main

if __name__ == "__main__":
    sys.exit(main())
