"""Models added on top of RecBole's own (one model per file)."""
