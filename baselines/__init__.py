"""Built-in strategies; importing this package registers them."""
from baselines import adapter, base, dnd, icl, lora  # noqa: F401
