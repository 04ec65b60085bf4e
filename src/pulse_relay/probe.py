"""`healthcheck`'s probe: one GET of a health URL of the running relay."""

from __future__ import annotations

import aiohttp


async def probe(url: str, timeout_seconds: float, *, is_own_listener: bool) -> tuple[int, str]:
    """GET `url`: (status, answer text). Raises aiohttp/OS errors when unreachable."""
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    # This relay's own listener (HTTPS without an admin side): its certificate names the
    # public host, not the loopback address probed, so it is not verified.
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, allow_redirects=False, ssl=not is_own_listener) as response,
    ):
        return response.status, (await response.text()).strip()
