"""``python -m manas_infer``: the CLI, also what torchrun launches for multi-GPU training."""

from manas_infer.cli import app

app()
