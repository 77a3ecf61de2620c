"""Small shared helpers: atomic file writes, CLI plumbing, process setup."""
