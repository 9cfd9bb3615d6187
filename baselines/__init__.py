"""Built-in strategies; importing this package registers them."""
from baselines import adapter, base, icl, lora  # noqa: F401
