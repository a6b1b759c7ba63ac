"""kd_modules: knowledge distillation for audio, on SpeechBrain (task-agnostic library)."""
