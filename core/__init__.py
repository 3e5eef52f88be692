"""SparseBench core: engine -> runs -> store -> analysis -> present, with execution beside.

Each sub-package says what lives there and what it may import; ``tests/test_layout.py`` checks it.
``config`` (paths and settings) is the one module every layer may use."""
