"""What the framework integrations share: a framework's hyperparameter as a run config value."""

from __future__ import annotations


def config_value(v):
    """JSON-like values as they are (inside dicts, lists and tuples too), a scalar tensor or
    array as its number, anything else as its text: a config holds what every reader can read."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, dict):
        return {str(k): config_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [config_value(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        return v.item()
    return str(v)
