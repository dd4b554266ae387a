from healing.cli import entry

entry()
