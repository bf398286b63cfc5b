"""The scanner side: replay of recorded runs (and, later, export-folder watchers)."""
