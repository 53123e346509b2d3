"""The transport: BusTracker (learner side), the broker and its durable store, BusClient.

``from bus import BusTracker`` is all a learner script needs; sinks and tools
use ``BusClient``; ``rose bus`` (or ``BrokerThread`` in tests) runs the broker.
"""

from bus.broker import Broker, BrokerError, BrokerThread
from bus.client import BusClient, BusError, StoreChangedError
from bus.tracker import BusTracker
from bus.wire import StoredEvent, read_bus_file

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerThread",
    "BusClient",
    "BusError",
    "BusTracker",
    "StoreChangedError",
    "StoredEvent",
    "read_bus_file",
]
