"""Drag-and-Drop LLMs (arXiv 2506.16406) as a harness strategy, in peft's method-as-a-package style:
`config` (generator presets), `tokenizer` (LoRA ⇄ parameter tokens), `layer` and `model` (the
hyper-convolutional decoder), `encoder` (frozen condition encoder), `library` (collect),
`generator` (meta_train, generate) and `strategy` (registration of dnd and its controls)."""
from baselines.dnd import config, report, strategy  # noqa: F401  (registers dnd and dnd_control)

report.register()
config.register_list()
