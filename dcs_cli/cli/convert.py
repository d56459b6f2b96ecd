"""`dcs convert` (placeholder registration until the data layer lands)."""


def register(app) -> None:
    pass
