"""The result cache: `app.w(cache="spirals-v1")` keeps every successful call's result on this machine, so
running the same call again returns it without running anything.

>>> cached = app.w(cache="spirals-v1")
>>> results = list(cached.map(train, configs))   # a second run of this line computes nothing
>>> list_caches(), clear_cache("spirals-v1")

Layout: `keys` (what makes two calls the same), `store` (the segment files under `.mini/cache/NAME/`),
`lookup` (one map's use of a cache, driven by `mini._maprun`), `folders` (caches by name: list, clear).
"""

from mini.cache.folders import CacheInfo, clear_cache, list_caches

__all__ = ["CacheInfo", "clear_cache", "list_caches"]
