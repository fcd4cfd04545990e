"""Awaiting another deployment or actor from the request path, with a deadline.

``asyncio.wait_for`` needs a coroutine or future; a Serve ``DeploymentResponse`` and a Ray
``ObjectRef`` are awaitables but neither, so every call with a timeout goes through here.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def _await(response: Any) -> Any:
    return await response


async def wait_for(response: Any, timeout_s: float) -> Any:
    """The result of ``response`` (a DeploymentResponse or ObjectRef), or TimeoutError after
    ``timeout_s``; a timed-out Serve call is cancelled so its replica stops working on it."""
    try:
        return await asyncio.wait_for(_await(response), timeout=timeout_s)
    except TimeoutError:
        cancel = getattr(response, "cancel", None)  # DeploymentResponse; an actor task keeps running
        if cancel is not None:
            cancel()
        raise
