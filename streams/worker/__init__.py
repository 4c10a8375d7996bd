"""The streaming worker: Faust app, start-up checks, decode -> join -> batch -> infer -> write -> ack."""
