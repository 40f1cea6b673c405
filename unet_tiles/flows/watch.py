"""Arrival events: the watcher's side of "segment an image the moment it lands".

The watcher (``unet-tiles watch``, ``unet_tiles.archive.arrival``) emits one event per
arrived image; the ``segment-on-arrival`` deployment's trigger
(``deploy/prefect.yaml``) turns each event into a ``segment_image`` flow run
whose parameters come from the event's payload::

    event    unet-tiles.image.arrived
    resource prefect.resource.id = unet-tiles.image.<input url>
    payload  {"input": ..., "output": ..., "model_dir": ..., "output_kind": ...}

The watcher needs no worker of its own and no Prefect flow run: it is a
long-lived process that only reports what it saw.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect.events import Event
from prefect.events.clients import get_events_client
from prefect.events.schemas.events import Resource

ARRIVED = "unet-tiles.image.arrived"
RESOURCE_PREFIX = "unet-tiles.image."


def arrival_event(input_url: str, name: str, payload: dict[str, Any]) -> Event:
    return Event(
        event=ARRIVED,
        resource=Resource({"prefect.resource.id": f"{RESOURCE_PREFIX}{input_url}",
                           "prefect.resource.name": name or input_url}),
        payload={"input": input_url, **payload},
    )


def emit_arrival(input_url: str, name: str, payload: dict[str, Any]) -> Event:
    """Send the event now and wait until the server has it.

    A dedicated client rather than ``emit_event``'s background queue: the
    watcher may be stopped any moment after an arrival, and a queued event
    would be lost with it.
    """
    event = arrival_event(input_url, name, payload)

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(event)

    asyncio.run(send())
    return event
