"""Shards on a server or in a bucket (data.shards an http(s):// or s3:// URL).

    fetch.py   one request with retries within a bounded wait, a download checked against the manifest's size and
               sha256, one line naming the URL when the server will not give it
    cache.py   a node's verified cache of the shards, bounded, shared by its ranks and workers; the loaders read the
               cached files as they read a local folder; `python -m pipeline.remote.cache DIR` re-checks one
    records.py what the cache knows of each cached file (its .ok record, its lock) and the full re-check
    upload.py  shard_dataset.py --upload: a finished folder put at a URL, manifest last
"""
