"""The Modal backend: the same calls on Modal's serverless containers and GPUs.

Only this package (and `mini.tls`) imports `modal`, and only when a `ModalApparatus` is used.
"""

from mini.modal_backend.apparatus import ModalApparatus

__all__ = ["ModalApparatus"]
