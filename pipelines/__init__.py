"""Model build: the SageMaker Pipeline, its job scripts, the local runner and registry."""
