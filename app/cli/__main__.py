"""`python -m app.cli`: the `trainyard` command (how `trainyard up` starts its children)."""

from app.cli import main

main()
