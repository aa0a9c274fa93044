"""Shards → training batches on the device.

    loader.py         build_loader and Loader: the one entry; batches of (images, ctx_idx, tgt_idx, labels, keys),
                      its position for a resume, a continuation on another number of ranks
    backend.py        what the loader asks of a backend (the Backend protocol)
    dali_backend.py   DALI: decode and crop on the GPU (its CPU mode without one); the only module that imports DALI
    torch_backend.py  PyTorch: random access through the indexes, DataLoader workers
    eval_view.py      the eval transform of one sample (short side to S/0.875, centre crop): probes, diagnostics

Every rank reads 1/world_size of each epoch's samples, in an order that depends only on (seed, epoch, rank).
"""
