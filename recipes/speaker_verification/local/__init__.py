"""Speaker verification stages 0, 1 and 8: the stand-in, prepare.py and the report."""
