"""A local source package the tests ship to containers with `Image.add_local_python_source`."""


def greet(name: str) -> str:
    return f"hello {name}"
