"""The development runtime: embedded broker and Redis, the local profile, the demo, simulated and media producers.

Nothing in streams.worker or streams.learning imports this package."""
