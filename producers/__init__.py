"""Event producers: how model servers get their per-request events into Kafka without blocking requests."""

from producers.kafka_publisher import KafkaEventPublisher, PublisherConfig, PublisherStats

__all__ = ["KafkaEventPublisher", "PublisherConfig", "PublisherStats"]
