"""How the daemon and ``trackside server`` stop: the first SIGTERM or SIGINT drains (stop taking
work, store what is acknowledged, close), a second one exits at once (everything acknowledged
is already durable in the WAL, so nothing acknowledged is lost)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal


def drain_on_signals(
    loop: asyncio.AbstractEventLoop,
    stop: asyncio.Event,
    log: logging.Logger,
    draining: str = "signal received: draining",
) -> None:
    signals = 0

    def on_signal():
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting now (the WAL holds every acknowledged batch)")
            os._exit(1)
        log.info(draining)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
