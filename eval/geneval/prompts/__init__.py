"""GenEval's official prompt set and class names (data; MIT, see LICENSE here)."""
