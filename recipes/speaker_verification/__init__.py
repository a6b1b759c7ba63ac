"""Speaker verification (VoxCeleb1, LibriSpeech): run.sh, train.py, cache_teacher.py."""
