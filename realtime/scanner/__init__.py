"""The scanner side: the export-folder watcher and its vendor readers, and replay of recorded runs."""
