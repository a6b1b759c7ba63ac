"""Models in SpeechBrain's hub format, in and out: a foreign teacher loaded as untrusted input
(:mod:`kd_modules.hub.trust`), our runs written as folders ``EncoderClassifier.from_hparams``
loads (:mod:`kd_modules.hub.export`).

The package imports none of its modules here, so importing one of them never builds another.
"""
