"""Small text corpora that Debian packages ship, turned into plain text (no torch)."""
