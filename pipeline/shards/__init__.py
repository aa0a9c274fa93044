"""The shard format and how a folder of images becomes one.

    manifest.py  manifest.json: its schema, read_manifest (the one way to open a shard folder, local or by URL),
                 list_shards, the checks of a folder's files against it
    format.py    a shard's files: tar and index names, the DALI index (written, and checked before it is trusted),
                 reading one sample's bytes
    scan.py      the source image folder: its class folders, image files and links, walked once
    images.py    each source image checked and turned into the JPEG bytes a shard stores
    writer.py    the assignment (a seeded shuffle cut into shards), the worker pool, resuming a killed run
    dest.py      who may write DEST: its lock, what a rerun keeps, --overwrite

The readers (pipeline/loading, evaluation, the shard cache) import manifest.py and format.py only.
"""
