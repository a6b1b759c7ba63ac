"""Sound classification stage 1: prepare.py and one reader per dataset."""
