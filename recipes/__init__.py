"""The recipes, one package each, so that tests and tools import them by name
(``from recipes.sound_classification import train``). Their scripts import their siblings the
same way; ``run.sh`` puts the repository root on ``PYTHONPATH`` (by hand:
``export PYTHONPATH=<repository root>``)."""
