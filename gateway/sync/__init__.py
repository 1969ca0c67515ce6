"""Upstream sync: store -> cloud MQTT brokers and Kafka, at least once, in order per node."""
