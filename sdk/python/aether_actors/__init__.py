"""aether actors in Python: define kinds as decide/apply functions (`Kind`), serve them to the
sidecar (`App`), call actors through the sidecar's app API (`Client`, `AsyncClient`), and test kinds
in memory without a sidecar (`aether_actors.testing.Harness`)."""

from .client import Actor, AetherError, AsyncClient, Client, Reply
from .kind import Context, Decision, Firing, InvalidDecision, Kind, Rejected, Send, SendReply, Timer
from .server import App

__all__ = [
    "Actor",
    "AetherError",
    "App",
    "AsyncClient",
    "Client",
    "Context",
    "Decision",
    "Firing",
    "InvalidDecision",
    "Kind",
    "Rejected",
    "Reply",
    "Send",
    "SendReply",
    "Timer",
]
