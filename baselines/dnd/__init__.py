"""Drag-and-Drop LLMs (arXiv 2506.16406) as a harness strategy, in peft's method-as-a-package style:
`config` (generator presets), `tokenizer` (LoRA ⇄ parameter tokens), `layer` and `model` (the
hyper-convolutional decoder), `encoder` (frozen condition encoder), `library` (collect),
`generator` (meta_train, generate), `strategy` (dnd, and what its controls share), `controls`,
`diagnostics` (the collapse check) and `report` (its report pages). The strategies register through
the `harness.strategies` entry points in pyproject.toml."""
