"""The image spec: what runs remotely, described without reference to any backend.

from mini.image import derive_image_spec
spec = derive_image_spec()
print(spec.python_version, len(spec.requirements), spec.image_hash)
"""
