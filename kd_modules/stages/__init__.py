"""Stage entry points a recipe's scripts call: each stage's main, written once for all recipes."""
