"""Queue, run control and executors: submit / cancel, the worker process, where runs execute.

May import ``core.store``, ``core.runs``, ``core.engine`` and ``core.config``."""
