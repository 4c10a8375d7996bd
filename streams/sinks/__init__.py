"""Where results go: Redis (the atomic per-utterance write and its aggregates), Kafka outputs, dead letters."""
