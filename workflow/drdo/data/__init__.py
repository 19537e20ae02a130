"""Raw dataset loaders and preference-split construction."""
