"""Prefect flows built on ``unet_tiles``: one image, an archive, arrivals.

``flows.segment``   ``segment_image``: validate -> prepare -> run blocks -> report
``flows.archive``   ``segment_archive``: discover, skip what is done, run the rest
``flows.watch``     arrival events that trigger ``segment_image`` deployments

This module imports no Prefect, so the CLI can ask ``api_configured()`` for free.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path


def api_configured() -> bool:
    """Whether a Prefect API (a server to track runs on) is configured.

    Looks at ``PREFECT_API_URL`` and at the active profile's setting, the two
    places users set it, without importing Prefect (over a second to import).
    """
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml"))
    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, ValueError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "ephemeral")
    settings = data.get("profiles", {}).get(active, {})
    return bool(settings.get("PREFECT_API_URL"))


EPHEMERAL_STARTUP_TIMEOUT_S = "120"


def allow_slow_server_start() -> None:
    """Give Prefect's temporary local server time to start (call before importing Prefect).

    Its 20 s default is too short on small machines (17 to 30 s measured on 2
    cores, bench/README.md); a user's own setting wins. Changes only this
    process's environment.
    """
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                          EPHEMERAL_STARTUP_TIMEOUT_S)
