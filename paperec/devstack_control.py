"""Start the dev stack from another command (the demo) and stop it again if that command did."""

from __future__ import annotations

from base.settings import Settings
from paperec.devstack.cli import SERVICES, state_lock
from paperec.devstack.cli import down as _down
from paperec.devstack.cli import up as _up


def ensure_up(settings: Settings) -> bool:
    """Start whatever part of the dev stack is not running; True if anything was started."""
    services = [cls(settings) for cls in SERVICES.values()]
    if all(svc.probe() for svc in services):
        return False
    with state_lock(settings.state_path):
        _up(services)
    return True


def down(settings: Settings) -> None:
    services = [cls(settings) for cls in SERVICES.values()]
    with state_lock(settings.state_path):
        _down(services, wipe=False)
