"""edgectl package."""
