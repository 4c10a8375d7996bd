"""Raw media -> per-modality feature sequences with models that work offline (an optional extra: `[extract]`)."""
