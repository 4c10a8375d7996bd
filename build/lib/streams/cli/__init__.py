"""The `mmcl` command: model tools, the service, the model registry, media producers and the local runtime."""
