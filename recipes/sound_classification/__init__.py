"""Sound classification (ESC-50, UrbanSound8K, AudioMNIST, FSDD): train.py, synthesize.py."""
