"""The bodies of the `detector` subcommands (argument parsing is in detector.cli)."""
