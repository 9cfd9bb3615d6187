"""Built-in strategies. They register through the `harness.strategies` entry points in pyproject.toml,
so importing this package loads none of them."""
