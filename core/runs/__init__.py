"""What a run is: specs (pydantic), results, the registry of run kinds and their execute steps.

May import ``core.engine`` and ``core.config``; never the store, execution or presentation."""
