"""Functions modal runs by import (not serialized): the container imports this module from the mount."""

import modal

import emulated_pkg

app = modal.App("emulated-pkg")
image = modal.Image.debian_slim().pip_install("six==1.16.0").add_local_python_source("emulated_pkg")


@app.function(image=image)
def shout(name: str) -> str:
    import six

    return six.ensure_str(emulated_pkg.greet(name)).upper()
