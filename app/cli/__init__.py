"""The command-line layer: `scones`, `run-pipeline`, `get-pipeline-definition`."""
