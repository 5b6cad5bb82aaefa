"""toy layer."""
