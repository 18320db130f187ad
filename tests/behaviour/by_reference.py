"""A module of the suite that is not registered by value (unlike `calls`)."""


def double(x: int) -> int:
    return 2 * x
