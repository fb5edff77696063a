"""The wire protocol: stubs generated from protos/ by hatch_build.py live in generated/."""
