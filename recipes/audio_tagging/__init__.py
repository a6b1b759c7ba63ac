"""Audio tagging on SONYC-UST (DCASE 2019 Task 5): run.sh, train.py, cache_teacher.py."""
