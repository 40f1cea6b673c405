"""Fault 4: transient read and write errors of the storage (``faultfs.py``).

Reads of input chunks and writes of label, probability and done-marker chunks
fail a few times with ``OSError`` or ``TimeoutError``, as a network filesystem
or object store does now and then; each is retried inside its block task
(``engine/faults.py``, unit-tested in test_faults.py) and the output is
byte-identical to a run without faults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from fault_helpers import (
    BLOCK,
    assert_identical,
    make_image,
    model_fixture,  # noqa: F401
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.cluster]


@pytest.mark.slow
def test_transient_io_errors_are_retried_and_the_output_is_correct(
        tmp_path: Path, model: Path) -> None:
    import faultfs
    from distributed import Client, LocalCluster

    from unet_tiles.engine.run import SegmentRequest, validate

    inp = make_image(tmp_path / "img.zarr")
    url = f"{faultfs.PROTOCOL}://{inp}"

    def run(out: Path, client: Any) -> None:
        r = validate(SegmentRequest(url, f"{faultfs.PROTOCOL}://{out}", str(model),
                                    output_kind="both", block_size=int(BLOCK)))
        r.segment(client, progress=False)

    # In-process workers share the armed faults with this test.
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        run(tmp_path / "ref.zarr", client)
        faultfs.reset()
        faultfs.arm(read=r"img\.zarr/c/1/1$", times=2)
        faultfs.arm(read=r"img\.zarr/c/3/4$", times=1, error=TimeoutError)
        faultfs.arm(write=r"out\.zarr/labels/c/2/3$", times=2)
        faultfs.arm(write=r"out\.zarr/probabilities/c/0/1/1$", times=1)
        faultfs.arm(write=r"out\.zarr/done/c/0/0$", times=1)
        try:
            run(tmp_path / "out.zarr", client)
        finally:
            injected = faultfs.reset()
    assert len(injected) == 7, injected
    assert_identical(tmp_path / "out.zarr", tmp_path / "ref.zarr")
