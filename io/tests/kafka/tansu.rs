//! Against a real Kafka-protocol broker: filled in below.
