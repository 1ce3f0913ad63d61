"""The Docker-free twin of the AWS services the project uses, so everything runs on this
machine with no AWS account: the SageMaker control plane and endpoint state
(control_plane.py, deployment_state.py), the guarded local deployment (guardrails.py), the
endpoint server (endpoint/), the pipeline runner (pipeline_runner/), moto's Step Functions
engine with in-process Lambdas (stepfunctions_engine.py) and the workflow deployed on it
(state_machines.py), CloudWatch metrics as a file (cloudwatch.py).

Reached only through scones.backend (an import-linter contract), which hands these out in
the shapes of the AWS clients they stand in for; nothing here imports scones.backend.
"""
