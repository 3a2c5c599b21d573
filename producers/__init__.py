"""Event producers: how model servers get their per-request events into Kafka without slowing requests.

``EventLogger`` is the model server's ``EventPublisher``: sampling, a bounded queue, delivery to Kafka, and a
disk spool while Kafka is unreachable (see ``docs/logging.md``). ``producers.testing`` has a fake producer.
"""

from producers.config import EventLoggerConfig
from producers.errors import ProducerError, SpoolError, SpoolLockedError
from producers.event_logger import EventLogger
from producers.stats import LoggerStats

# The names recwatch.cli used before the spool existed; same classes.
KafkaEventPublisher = EventLogger
PublisherConfig = EventLoggerConfig

__all__ = [
    "EventLogger",
    "EventLoggerConfig",
    "KafkaEventPublisher",
    "LoggerStats",
    "ProducerError",
    "PublisherConfig",
    "SpoolError",
    "SpoolLockedError",
]
