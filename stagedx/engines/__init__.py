"""stagedx.engines: TensorRT engine building (`build-engine`) and backend validation (`validate`)."""
