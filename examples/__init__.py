"""Examples of extending gan_translate from your own project (importable when run from the repository root)."""
