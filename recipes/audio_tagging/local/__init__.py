"""Audio tagging stages 0, 1 and 8: the stand-in, prepare.py (with the taxonomy) and the report."""
