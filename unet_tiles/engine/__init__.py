"""One run of one image: ``run`` (validate, prepare, execute, finalize under the output's
lock), ``blocks`` (one dask task per block), ``cluster`` (local CPU/CUDA or a
scheduler), ``faults`` (retries, a full disk, dead workers), ``lock`` (one writer per
output) and ``benchmark`` (what ``unet-tiles bench`` measures). Imports ``pipeline`` and
``model``; never Prefect, ``archive``, ``flows`` or ``cli``.
"""
