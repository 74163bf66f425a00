"""``python -m riffstream``: the command line."""

from riffstream.cli import main

raise SystemExit(main())
