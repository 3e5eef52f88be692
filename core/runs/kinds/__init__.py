"""One module per run kind (prune, activation, search), each registered by name in ``registry``.

May import ``core.runs`` and ``core.engine``."""
