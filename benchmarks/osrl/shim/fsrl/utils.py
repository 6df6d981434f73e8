"""Stand-in for `fsrl.utils`, which OSRL imports only for its loggers.

fsrl is not on the package registries reachable here. OSRL's BCQ-Lag calls `logger.store(**stats)`
once per update; these classes accept and drop the stats so that the update itself (what the
benchmark measures) runs unchanged.
"""

from typing import Any


class DummyLogger:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def store(self, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class WandbLogger(DummyLogger):
    pass
